"""A bug of the gateway's in the middle of a metered request: the client gets a 500 in OpenAI's
error shape that tells nothing of the bug, the log has it with its traceback, the request's
reservation is released without a charge, and the gateway goes on serving.

In-process, so that one collaborator (the meter) can be made to raise: the real app
(``create_app``) served by uvicorn on loopback as ``gateway serve`` serves it, on a real SQLite
file, in front of the scripted upstream; the client is the ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog
import uvicorn
from structlog.testing import capture_logs

from gateway.app import create_app
from gateway.config import parse_config
from gateway.proxy.metering import Meter
from upstream import UpstreamServer, answer_text, free_port

ADMIN_TOKEN = "internal-errors-admin-token"
HELLO = [{"role": "user", "content": "hello"}]
HELLO_TOKENS = 8  # by OpenAI's recipe, in o200k_base


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer("a") as server:
        yield server


@pytest.fixture
async def gateway(
    tmp_path: Path, upstream: UpstreamServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The gateway's app served by uvicorn on this test's event loop; its URL."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    config = parse_config(f"""
[storage]
url = "sqlite:///{tmp_path / "gateway.db"}"

[[backends]]
name = "a"
base_url = "{upstream.url}"

[[routes]]
model = "m"
backend = "a"
input_price = "1"
output_price = "2"
tokenizer = "o200k_base"
""")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=port,
            http="httptools",
            ws="none",
            lifespan="on",
            log_config=None,
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "the gateway did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def admin(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
        trust_env=False,
    ) as client:
        yield client


async def test_an_unexpected_exception_is_a_500_that_releases_the_reservation(
    gateway: str,
    admin: httpx.AsyncClient,
    upstream: UpstreamServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wallet_id = (await admin.post("/admin/wallets", json={"name": "w", "balance": "10"})).json()
    wallet_id = wallet_id["id"]
    made = await admin.post("/admin/keys", json={"wallet_id": wallet_id, "name": "k"})
    sdk = openai.AsyncOpenAI(
        base_url=f"{gateway}/v1", api_key=made.json()["key"], max_retries=0, timeout=30
    )

    async def wallet() -> dict[str, Any]:
        response = await admin.get(f"/admin/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def broken_record(self: Meter, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the meter broke")

    async with sdk:
        with monkeypatch.context() as patch, capture_logs() as logs:
            patch.setattr(Meter, "record", broken_record)
            # the upstream answers after 0.5 s: meanwhile the request's reservation is held
            request: asyncio.Task[Any] = asyncio.create_task(
                sdk.chat.completions.with_raw_response.create(
                    model="m",
                    messages=HELLO,  # type: ignore[arg-type]
                    max_tokens=10,
                    extra_body={"script": {"delay_s": 0.5}},
                )
            )
            held = await wallet()
            while held["reserved"] == "0" and not request.done():
                await asyncio.sleep(0.02)
                held = await wallet()
            with pytest.raises(openai.InternalServerError) as caught:
                await request
        assert held["reserved"] == "0.000028", held  # 8 prompt x 1 + 10 completion x 2
        assert caught.value.status_code == 500
        assert caught.value.body == {
            "message": "The gateway failed to handle this request.",
            "type": "api_error",
            "param": None,
            "code": "internal_error",
        }
        assert "meter" not in caught.value.response.text  # nothing of the bug leaks
        request_id = caught.value.response.headers["x-request-id"]
        assert len(upstream.requests) == 1  # it went upstream; the answer was never delivered

        # the gateway logged it, with the traceback
        [logged] = [e for e in logs if e["event"] == "internal_error"]
        assert (logged["log_level"], logged["path"]) == ("error", "/v1/chat/completions")
        assert isinstance(logged["exc_info"], RuntimeError)
        rendered = structlog.processors.format_exc_info(None, "error", dict(logged))["exception"]
        assert rendered.startswith("Traceback (most recent call last):"), rendered
        assert "in broken_record" in rendered
        assert rendered.rstrip().endswith("RuntimeError: the meter broke"), rendered

        # the reservation was released, nothing charged, the request recorded as failed
        after = await wallet()
        assert (after["balance"], after["reserved"], after["available"]) == ("10", "0", "10")
        usage = (await admin.get("/admin/usage", params={"wallet_id": wallet_id})).json()
        [record] = usage["data"]
        assert (record["request_id"], record["status"], record["error"]) == (
            request_id,
            "error",
            "internal",
        )
        assert (record["cost"], record["prompt_tokens"], record["completion_tokens"]) == (
            "0",
            0,
            0,
        )
        ledger = (await admin.get(f"/admin/wallets/{wallet_id}/ledger")).json()["data"]
        assert [e["amount"] for e in ledger] == ["10"]  # the credit alone

        # the gateway goes on serving, and charging
        answer = await sdk.chat.completions.create(
            model="m",
            messages=HELLO,  # type: ignore[arg-type]
            extra_body={"script": {"words": 3, "prompt_tokens": HELLO_TOKENS}},
        )
    assert answer.choices[0].message.content == answer_text(3)
    after = await wallet()
    assert (after["balance"], after["reserved"]) == ("9.999986", "0")  # 8 x 1 + 3 x 2
    assert (await admin.get("/readyz")).status_code == 200
