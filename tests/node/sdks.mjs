// The Node SDKs through the gateway, driven by tests/e2e/test_node_sdks.py.
//
// Environment: GATEWAY_BASE_URL (".../v1"), GATEWAY_API_KEY, CHAT_MODEL (a model whose backend
// speaks only chat completions) and NATIVE_MODEL (one whose backend speaks the Responses API).
// Prints one JSON array: one entry per call, {name, ok, calls, text, usage} or {name, ok, error}.
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
const models = { chat: process.env.CHAT_MODEL, native: process.env.NATIVE_MODEL };

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const openai = createOpenAI({ baseURL, apiKey });
const weather = tool({
  description: "The weather in a city.",
  inputSchema: z.object({ city: z.string(), unit: z.string() }),
  execute: async ({ city, unit }) => `22 degrees ${unit} in ${city}`,
});

const results = [];

async function run(name, calls, fn) {
  try {
    results.push({ name, ok: true, calls, ...(await fn()) });
  } catch (error) {
    results.push({ name, ok: false, calls, error: String(error?.stack ?? error) });
  }
}

async function streamed(result) {
  const errors = [];
  let text = "";
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") text += part.text;
    if (part.type === "error") errors.push(part.error);
  }
  if (errors.length) throw new Error(`stream error: ${JSON.stringify(errors)}`);
  return { text, usage: await result.usage };
}

for (const [flavour, model] of Object.entries(models)) {
  await run(`openai responses.create (${flavour})`, 1, async () => {
    const response = await client.responses.create({ model, input: "hello" });
    return { text: response.output_text, usage: response.usage };
  });
  await run(`openai responses.create stream (${flavour})`, 1, async () => {
    const stream = await client.responses.create({ model, input: "hello", stream: true });
    let text = "";
    let usage = null;
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") usage = event.response.usage;
    }
    return { text, usage };
  });
  await run(`ai generateText responses (${flavour})`, 1, async () => {
    const result = await generateText({ model: openai(model), prompt: "hello" });
    return { text: result.text, usage: result.usage };
  });
  await run(`ai streamText responses (${flavour})`, 1, async () =>
    streamed(streamText({ model: openai(model), prompt: "hello" })),
  );
  await run(`ai generateText responses with a tool (${flavour})`, 2, async () => {
    const result = await generateText({
      model: openai(model),
      prompt: "What is the weather in Paris?",
      tools: { get_weather: weather },
      stopWhen: stepCountIs(3),
      // By default the AI SDK sends earlier output back as item_reference ids, for OpenAI to
      // look up in what it stored. A chat-only backend stores nothing: send the items.
      ...(flavour === "chat" && { providerOptions: { openai: { store: false } } }),
    });
    const results = result.steps.flatMap((step) => step.toolResults.map((r) => r.output));
    return { text: result.text, usage: result.totalUsage, toolResults: results };
  });
}

const model = models.chat;
await run("openai chat.completions stream (chat)", 1, async () => {
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "hello" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, usage };
});
await run("ai generateText chat (chat)", 1, async () => {
  const result = await generateText({ model: openai.chat(model), prompt: "hello" });
  return { text: result.text, usage: result.usage };
});
await run("ai streamText chat (chat)", 1, async () =>
  streamed(streamText({ model: openai.chat(model), prompt: "hello" })),
);
await run("ai streamText chat with a tool (chat)", 2, async () => {
  const result = streamText({
    model: openai.chat(model),
    prompt: "What is the weather in Paris?",
    tools: { get_weather: weather },
    stopWhen: stepCountIs(3),
  });
  const out = await streamed(result);
  return { ...out, usage: await result.totalUsage };
});

console.log(JSON.stringify(results));
