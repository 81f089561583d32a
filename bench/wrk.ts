// Closed-loop load from wrk (Debian package `wrk`), a C load generator: it costs a few
// microseconds per request where the Node load generator (load.ts) costs 50–150, which on a
// 2-core machine would otherwise eat the CPU the servers are being measured with. One wrk
// process, one thread per target (`thread.addr` points each at its own member), every
// connection in a closed loop. Keys are made in Lua from the request number, so PUTs write new
// keys and GETs read the keys written before, as with load.ts.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { LoadResult } from './load.ts';

/** A request with `{key}` in its path or body where the key goes. */
export interface RequestTemplate {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
  /** etcd's JSON gateway wants keys in base64. */
  keyEncoding?: 'plain' | 'base64';
}

export interface WrkSpec {
  /** http://127.0.0.1:port origins; one wrk thread each. */
  targets: string[];
  connections: number;
  durationMs: number;
  template: RequestTemplate;
  /** Request n uses key `${prefix}${n}`, or `${prefix}${(n * 7919) % modulo}` when modulo is set. */
  keyPrefix: string;
  modulo?: number;
}

export function wrkAvailable(): boolean {
  return spawnSync('wrk', ['--version'], { encoding: 'utf8' }).error === undefined;
}

const lua = (s: string) => JSON.stringify(s); // a JSON string literal is a valid Lua string literal here

function script(spec: WrkSpec): string {
  const t = spec.template;
  const targets = spec.targets.map((o) => {
    const u = new URL(o);
    if (u.hostname !== '127.0.0.1') throw new Error(`wrk load only targets loopback, not ${o}`);
    return `{ host = ${lua(u.hostname)}, port = ${lua(u.port)} }`;
  });
  const headers = Object.entries(t.headers)
    .map(([k, v]) => `[${lua(k)}] = ${lua(v)}`)
    .join(', ');
  const [pathBefore, pathAfter] = t.path.split('{key}');
  const [bodyBefore, bodyAfter] = t.body?.split('{key}') ?? [];
  return `
local targets = { ${targets.join(', ')} }
local nthreads = #targets
local created = 0
local threads = {}
function setup(thread)
  created = created + 1
  threads[created] = thread
  local t = targets[created]
  thread.addr = wrk.lookup(t.host, t.port)[1]
  thread:set("tid", created - 1)
  thread:set("nthreads", nthreads)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    local function ch(shift) return b64chars:sub(bit.band(bit.rshift(n, shift), 63) + 1, bit.band(bit.rshift(n, shift), 63) + 1) end
    out[#out + 1] = ch(18) .. ch(12) .. (b and ch(6) or "=") .. (c and ch(0) or "=")
  end
  return table.concat(out)
end

local headers = { ${headers} }
n = 0 -- a global: done() reads it per thread
local verified = false
function request()
  -- wrk calls request() once in thread 1's state to check the script; that request is never
  -- sent, so it must not use up a key.
  if tid == 0 and not verified then
    verified = true
    return wrk.format(${lua(t.method)}, "/wrk-check")
  end
  local i = tid + n * nthreads
  n = n + 1
  ${spec.modulo ? `i = (i * 7919) % ${spec.modulo}` : ''}
  local key = ${lua(spec.keyPrefix)} .. string.format("%d", i)
  ${t.keyEncoding === 'base64' ? 'key = b64(key)' : ''}
  local body = ${bodyAfter !== undefined ? `${lua(bodyBefore!)} .. key .. ${lua(bodyAfter)}` : t.body !== undefined ? lua(t.body) : 'nil'}
  return wrk.format(${lua(t.method)}, ${pathAfter !== undefined ? `${lua(pathBefore!)} .. key .. ${lua(pathAfter)}` : lua(t.path)}, headers, body)
end

local shown = false
function response(status, headers, body)
  if status >= 300 and not shown then
    shown = true
    io.write("WRK_FIRST_ERROR " .. status .. " " .. body:sub(1, 200):gsub("\\n", " ") .. "\\n")
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local fewest = nil
  for _, t in ipairs(threads) do
    local made = t:get("n")
    if fewest == nil or made < fewest then fewest = made end
  end
  io.write(string.format("WRK_RESULT {\\"fewest\\":%d,\\"requests\\":%d,\\"us\\":%d,\\"p50\\":%d,\\"p99\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}\\n",
    fewest, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
`;
}

export interface WrkResult extends LoadResult {
  /** Keys `${keyPrefix}0` up to here were all requested and answered (per-thread numbering). */
  contiguousKeys: number;
}

/** Runs wrk for the spec's duration; ops count only answers with a 2xx/3xx status. */
export async function runWrk(spec: WrkSpec): Promise<WrkResult> {
  const dir = mkdtempSync(path.join(tmpdir(), 'pivot-wrk-'));
  try {
    const file = path.join(dir, 'load.lua');
    writeFileSync(file, script(spec));
    const threads = spec.targets.length;
    const connections = Math.max(threads, Math.round(spec.connections / threads) * threads);
    const args = [
      '-t',
      String(threads),
      '-c',
      String(connections),
      '-d',
      `${Math.max(1, Math.round(spec.durationMs / 1000))}s`,
      '--timeout',
      '10s',
      '-s',
      file,
      spec.targets[0]!,
    ];
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let text = '';
      child.stdout.on('data', (d: Buffer) => (text += d.toString()));
      child.stderr.on('data', (d: Buffer) => (text += d.toString()));
      child.on('error', reject);
      child.on('exit', (code) =>
        code === 0 ? resolve(text) : reject(new Error(`wrk exited with ${code}: ${text.slice(-500)}`)),
      );
    });
    const line = /WRK_RESULT (\{.*\})/.exec(out)?.[1];
    if (!line) throw new Error(`wrk printed no result:\n${out.slice(-1000)}`);
    const r = JSON.parse(line) as Record<string, number>;
    const errors = r.connect! + r.read! + r.write! + r.status! + r.timeout!;
    const seconds = r.us! / 1e6;
    const ok = r.requests! - r.status!;
    // Each thread made requests tid, tid + threads, …; the last `connections / threads` of the
    // thread that made the fewest may have been cut off in flight.
    const contiguous = Math.max(0, (r.fewest! - connections / threads) * threads);
    return {
      contiguousKeys: contiguous,
      ops: ok,
      errors,
      seconds,
      opsPerSec: ok / seconds,
      p50Ms: r.p50! / 1000,
      p99Ms: r.p99! / 1000,
      ...(errors
        ? {
            firstError: `wrk: ${r.status} non-2xx answers (first: ${/WRK_FIRST_ERROR (.*)/.exec(out)?.[1] ?? '?'}), ${r.timeout} timeouts, ${r.connect! + r.read! + r.write!} socket errors`,
          }
        : {}),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
