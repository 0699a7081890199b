-- wrk script for bench/ack_throughput.py: POST a webhook body whose `id` is different on every request.
--
--   wrk -s bench/wrk_ack.lua URL -- BODY_FILE TOKEN ID_PREFIX
--
-- BODY_FILE holds the JSON body with the placeholder @@ID@@ where the id goes; the id is
-- ID_PREFIX (6 digits, one per wrk run) .. thread number (3 digits) .. counter (10 digits),
-- 19 digits like Datadog's $ID. response() counts 202 answers and the rest; done() prints
-- one line "BENCH_JSON {...}" that the Python script reads.

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("tid", thread_count)
   table.insert(threads, thread)
end

local prefix, suffix, id_prefix
local headers = {}
local counter = 0
accepted = 0
rejected = 0

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local body = file:read("*a")
   file:close()
   prefix, suffix = body:match("^(.-)@@ID@@(.*)$")
   assert(prefix, "the body file has no @@ID@@ placeholder")
   headers["Authorization"] = "Bearer " .. args[2]
   headers["Content-Type"] = "application/json"
   id_prefix = args[3] .. string.format("%03d", tid)
end

function request()
   counter = counter + 1
   local body = prefix .. id_prefix .. string.format("%010d", counter) .. suffix
   return wrk.format("POST", "/webhooks/datadog", headers, body)
end

function response(status, response_headers, body)
   if status == 202 then
      accepted = accepted + 1
   else
      rejected = rejected + 1
   end
end

function done(summary, latency, requests)
   local total_accepted, total_rejected = 0, 0
   for _, thread in ipairs(threads) do
      total_accepted = total_accepted + thread:get("accepted")
      total_rejected = total_rejected + thread:get("rejected")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "accepted": %d, "rejected": %d, '
         .. '"connect": %d, "read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
      summary.requests, summary.duration, total_accepted, total_rejected,
      e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99)
   ))
end
