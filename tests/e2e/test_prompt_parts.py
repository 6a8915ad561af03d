"""Parts that are not text are paid for: a PDF, or an image at high detail, that the wallet
cannot pay for is refused (402) before anything goes upstream, through the running gateway.

The route prices a token at 0.001 credit (input and output), so costs read as token counts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from e2e.helpers import MILLI_ROUTE as ROUTE
from e2e.helpers import assert_error
from gateway_proc import GatewayFactory, GatewayProcess
from media import png
from upstream import DEFAULT_PROMPT_TOKENS, UpstreamServer

pytestmark = pytest.mark.e2e

#: A ~200 KB PDF: 200,000 tokens by its size, 200 credits.
PDF = (b"%PDF-1.4\n" + b"% filler line of a large document\n" * 6_000)[: 200_000 - 6] + b"%%EOF\n"
PDF_URL = "data:application/pdf;base64," + base64.b64encode(PDF).decode()


#: 2048 x 2048 at high detail: scaled to 768 x 768, 2 x 2 tiles, 85 + 170 x 4 = 765 tokens.
IMAGE_URL = "data:image/png;base64," + base64.b64encode(png(2048, 2048)).decode()


def _pdf_message(text: str = "Summarise this.") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "file", "file": {"file_data": PDF_URL, "filename": "report.pdf"}},
            ],
        }
    ]


def _image_message(detail: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": detail}},
            ],
        }
    ]


@pytest.fixture
def served(
    gateway_factory: GatewayFactory, upstream_factory: Callable[[str], UpstreamServer]
) -> tuple[GatewayProcess, UpstreamServer]:
    """A gateway of the test's own serving ``m`` from one scripted upstream."""
    upstream = upstream_factory("a")
    gateway = gateway_factory(backends=[{"name": "a", "base_url": upstream.url}], routes=[ROUTE])
    return gateway, upstream


def _account(gateway: GatewayProcess, balance: str) -> tuple[str, str]:
    """A wallet with ``balance`` and a key on it: (wallet id, secret)."""
    with gateway.admin() as admin:
        wallet_id = admin.make_wallet(balance)
        _key_id, secret = admin.make_key(wallet_id)
    return wallet_id, secret


async def _post(
    gateway: GatewayProcess, secret: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60.0,
        trust_env=False,
    ) as client:
        return await client.post(path, json=body)


def _refused(response: httpx.Response) -> None:
    assert_error(response, 402, "insufficient_quota", "insufficient_quota")


async def test_a_pdf_the_wallet_cannot_pay_for_is_refused_before_going_upstream(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    wallet_id, secret = _account(gateway, "1")  # 1,000 tokens
    body = {"model": "m", "messages": _pdf_message(), "max_tokens": 5}
    _refused(await _post(gateway, secret, body))
    responses_body = {
        "model": "m",
        "max_output_tokens": 16,
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Summarise this."},
                    {"type": "input_file", "file_data": PDF_URL, "filename": "report.pdf"},
                ],
            }
        ],
    }
    _refused(await _post(gateway, secret, responses_body, "/v1/responses"))
    assert upstream.requests == []

    # the same wallet pays for a small text message
    text = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
    response = await _post(gateway, secret, text)
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == 1
    with gateway.admin() as admin:
        admin.assert_books_balance(wallet_id)


async def test_a_pdf_the_wallet_pays_for_is_charged_what_the_backend_reports(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    wallet_id, secret = _account(gateway, "1000")  # 1,000,000 tokens
    body = {"model": "m", "messages": _pdf_message(), "max_tokens": 5}
    response = await _post(gateway, secret, body)
    assert response.status_code == 200, response.text
    [received] = upstream.requests
    assert received.body["messages"][0]["content"][1]["file"]["file_data"] == PDF_URL
    usage = response.json()["usage"]
    with gateway.admin() as admin:
        record = admin.assert_charged(
            gateway,
            wallet_id,
            response.headers["x-request-id"],
            model="m",
            prompt=DEFAULT_PROMPT_TOKENS,  # the backend's report, not the 200,000 reserved
            completion=usage["completion_tokens"],
        )
        assert record["prompt_tokens"] == usage["prompt_tokens"] == 10, record
        admin.assert_books_balance(wallet_id)


async def test_a_high_detail_image_is_paid_for_by_its_tiles(
    served: tuple[GatewayProcess, UpstreamServer],
) -> None:
    gateway, upstream = served
    # 500 tokens: enough for the image at low detail (85), not at high detail (765)
    wallet_id, secret = _account(gateway, "0.5")
    high = {"model": "m", "messages": _image_message("high"), "max_tokens": 5}
    _refused(await _post(gateway, secret, high))
    auto = {"model": "m", "messages": _image_message("auto"), "max_tokens": 5}
    _refused(await _post(gateway, secret, auto))
    assert upstream.requests == []

    low = {"model": "m", "messages": _image_message("low"), "max_tokens": 5}
    response = await _post(gateway, secret, low)
    assert response.status_code == 200, response.text
    [received] = upstream.requests
    assert received.body["messages"][0]["content"][1]["image_url"]["detail"] == "low"
    with gateway.admin() as admin:
        record = admin.usage_record(response.headers["x-request-id"])
        assert record["prompt_tokens"] == DEFAULT_PROMPT_TOKENS, record
        admin.assert_books_balance(wallet_id)
