// bench.mjs measures envd through the unmodified e2b SDK, the way the SDK's
// users see it: commands.run('true') round trips and a 64 MiB files.write
// and files.read. It prints one JSON line that BenchmarkE2BSDK reports.
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
let t0 = performance.now()
await sbx.files.write(path, data, opts)
const upS = (performance.now() - t0) / 1000
t0 = performance.now()
const back = await sbx.files.read(path, { ...opts, format: 'bytes' })
const downS = (performance.now() - t0) / 1000
if (back.length !== size) throw new Error(`read ${back.length} bytes, want ${size}`)

console.log(JSON.stringify({
  execP50Ms: pct(0.5), execP95Ms: pct(0.95),
  uploadMiBps: 64 / upS, downloadMiBps: 64 / downS,
}))
