// bench.mjs measures envd through the unmodified e2b SDK, the way the SDK's
// users see it: commands.run('true') round trips and a 64 MiB files.write
// and files.read, beside the gzip download ceiling of the client itself. It
// prints one JSON line that the benchmarks report (sdkbench.Metrics).
import { Sandbox } from 'e2b'

const base = process.env.WRENN_E2BSDK_DIR
const runs = Number(process.env.WRENN_E2BSDK_RUNS || 200)
// A fresh user's login shell, as in a sandbox image: the host's root may
// have a .bashrc that costs far more than envd (pyenv init: ~100 ms).
const opts = process.env.WRENN_E2BSDK_USER ? { user: process.env.WRENN_E2BSDK_USER } : {}
// An envd that was initialised with an access token (as every sandbox's
// is) needs the SDK to send it, which the SDK does for a sandbox it knows
// the token of; debug mode's Sandbox.create never has one.
const token = process.env.WRENN_E2BSDK_TOKEN
const sbx = token
  ? new Sandbox({ sandboxId: 'debug_sandbox_id', envdVersion: '99.99.99', envdAccessToken: token })
  : await Sandbox.create()

for (let i = 0; i < 10; i++) await sbx.commands.run('true', opts) // warm up connections
const lat = []
for (let i = 0; i < runs; i++) {
  const t0 = performance.now()
  const r = await sbx.commands.run('true', opts)
  lat.push(performance.now() - t0)
  if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`)
}
lat.sort((a, b) => a - b)
const pct = (p) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))]

const size = 64 << 20
const data = new Uint8Array(size)
for (let i = 0; i < size; i += 4096) data[i] = i & 0xff
const path = 'bench.bin' // in the user's home
const median3 = (v) => v.sort((a, b) => a - b)[1]
// Each transfer three times, the median kept: a single 64 MiB transfer
// moves by a third from run to run on a loaded machine.
const ups = []
const downs = []
for (let i = 0; i < 3; i++) {
  let t0 = performance.now()
  await sbx.files.write(path, data, opts)
  ups.push(64 / ((performance.now() - t0) / 1000))
  t0 = performance.now()
  const back = await sbx.files.read(path, { ...opts, format: 'bytes' })
  downs.push(64 / ((performance.now() - t0) / 1000))
  if (back.length !== size) throw new Error(`read ${back.length} bytes, want ${size}`)
}

// The most this client can take in a gzip-encoded download: the same bytes,
// gzipped beforehand as envd does (fastest level), from a server in another
// process that does nothing else (sdkbench.GzipCeiling). fetch asks for gzip
// by itself and files.read goes through it, so no envd that compresses can
// be read faster than this.
const ceilingURL = process.env.WRENN_E2BSDK_GZIP_URL
if (!ceilingURL) throw new Error('WRENN_E2BSDK_GZIP_URL must name the gzip ceiling server')
const ceil = []
for (let i = 0; i < 3; i++) {
  const t0 = performance.now()
  const b = await (await fetch(ceilingURL)).arrayBuffer()
  ceil.push(64 / ((performance.now() - t0) / 1000))
  if (b.byteLength !== size) throw new Error(`gzip ceiling: ${b.byteLength} bytes, want ${size}`)
}

console.log(JSON.stringify({
  execP50Ms: pct(0.5), execP95Ms: pct(0.95),
  uploadMiBps: median3(ups), downloadMiBps: median3(downs),
  gzipCeilingMiBps: median3(ceil),
}))
