-- wrk script: POST a realistic chat body with a bearer key; print one JSON line when done.
--   wrk -t1 -c64 -d10s -s bench/load.lua http://127.0.0.1:P/v1/chat/completions -- KEY [stream]
-- KEY may be "-" for none. The last line printed starts with "BENCHJSON ".

local key = ""
local stream = false

local function chat_body(streaming)
  local tail = "}"
  if streaming then
    tail = ',"stream":true,"stream_options":{"include_usage":true}}'
  end
  return '{"model":"bench-model","temperature":0.2,"max_tokens":256,"messages":['
    .. '{"role":"system","content":"You are a concise assistant for a logistics company. '
    .. 'Answer in plain English, cite figures from the conversation, never invent numbers."},'
    .. '{"role":"user","content":"Summarise the delivery delays of last week by region: '
    .. 'North had 3 late parcels out of 410, South 1 of 388, East none of 295, West 5 of 402."},'
    .. '{"role":"assistant","content":"Last week 9 of 1,495 parcels were late (0.6%). '
    .. 'West had the most (5 of 402, 1.2%), then North (3 of 410), South (1 of 388); East had none."},'
    .. '{"role":"user","content":"Write a short note to the West depot manager about it, '
    .. 'two paragraphs, friendly but firm, asking for a plan by Friday."}]'
    .. tail
end

function init(args)
  key = args[1] or "-"
  stream = args[2] == "stream"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if key ~= "-" and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
  wrk.body = chat_body(stream)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
