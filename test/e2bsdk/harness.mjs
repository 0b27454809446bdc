// harness.mjs drives a standalone envd with the unmodified e2b SDK (debug
// mode, E2B_SANDBOX_URL pointing at envd) and asserts what every process,
// PTY and filesystem method returns. It exits non-zero on the first mismatch;
// the Go test in this directory runs it.
import { Sandbox, CommandExitError, FileNotFoundError } from 'e2b'
import assert from 'node:assert/strict'

const otherUser = process.env.WRENN_E2BSDK_USER || ''
const base = process.env.WRENN_E2BSDK_DIR
assert.ok(base, 'WRENN_E2BSDK_DIR must name a scratch directory')

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const dec = new TextDecoder()
const enc = new TextEncoder()

// waitFor polls cond until it holds or ms passed.
async function waitFor(what, cond, ms = 5000) {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return
    await sleep(20)
  }
  assert.fail(`timed out waiting for ${typeof what === 'function' ? what() : what}`)
}

const steps = []
function step(name, fn) { steps.push([name, fn]) }

// envd was initialised with an access token, as every sandbox's is; the SDK
// sends it on every call, and signs download and upload URLs with it.
const token = process.env.WRENN_E2BSDK_TOKEN
assert.ok(token, 'WRENN_E2BSDK_TOKEN must carry the access token envd was initialised with')
const sbx = new Sandbox({ sandboxId: 'debug_sandbox_id', envdVersion: '99.99.99', envdAccessToken: token })

step('isRunning', async () => {
  assert.equal(await sbx.isRunning(), true)
})

step('commands.run foreground', async () => {
  const r = await sbx.commands.run('echo out; printf "\\377\\001" >/dev/null; echo err >&2')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'out\n')
  assert.equal(r.stderr, 'err\n')

  const streamed = []
  await sbx.commands.run('for i in 1 2 3; do echo line$i; done', { onStdout: (d) => streamed.push(d) })
  assert.equal(streamed.join(''), 'line1\nline2\nline3\n')

  const env = await sbx.commands.run('echo "$FOO:$PWD"', { envs: { FOO: 'bar' }, cwd: base })
  assert.equal(env.stdout, `bar:${base}\n`)

  await assert.rejects(sbx.commands.run('echo bye >&2; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, `want CommandExitError, got ${e}`)
    assert.equal(e.exitCode, 3)
    assert.equal(e.stderr, 'bye\n')
    return true
  })
})

step('commands.run as another user', async () => {
  if (!otherUser) return
  const r = await sbx.commands.run('id -un; echo $HOME', { user: otherUser })
  assert.equal(r.stdout, `${otherUser}\n/home/${otherUser}\n`)
  const info = await sbx.files.write('as-user.txt', 'mine', { user: otherUser })
  assert.equal(info.path, `/home/${otherUser}/as-user.txt`)
  assert.equal((await sbx.files.getInfo(info.path)).owner, otherUser)
})

step('commands.run background, connect, list, sendStdin, closeStdin, kill', async () => {
  const bg = await sbx.commands.run('sleep 0.5; echo late', { background: true })
  assert.ok(bg.pid > 0)
  const listed = await sbx.commands.list()
  const mine = listed.find((p) => p.pid === bg.pid)
  assert.ok(mine, `pid ${bg.pid} missing from commands.list: ${JSON.stringify(listed)}`)
  assert.ok(mine.args.includes('sleep 0.5; echo late'), `list shows the command: ${JSON.stringify(mine)}`)
  await bg.disconnect()
  const again = await sbx.commands.connect(bg.pid)
  const r = await again.wait()
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'late\n')
  await waitFor('finished process to leave the list', async () =>
    !(await sbx.commands.list()).some((p) => p.pid === bg.pid))

  const rd = await sbx.commands.run('read x; echo "got $x"', { background: true, stdin: true })
  await sbx.commands.sendStdin(rd.pid, 'abc\n')
  assert.equal((await rd.wait()).stdout, 'got abc\n')

  const cat = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(cat.pid, 'no newline')
  await sbx.commands.closeStdin(cat.pid)
  assert.equal((await cat.wait()).stdout, 'no newline')

  // The same through the handle's own methods.
  const h = await sbx.commands.run('read x; echo "h:$x"; cat', { background: true, stdin: true })
  await h.sendStdin('one\n')
  await h.sendStdin('two')
  await h.closeStdin()
  assert.equal((await h.wait()).stdout, 'h:one\ntwo')
  const hk = await sbx.commands.run('sleep 60', { background: true })
  assert.equal(await hk.kill(), true)
  await assert.rejects(hk.wait(), CommandExitError)

  const long = await sbx.commands.run('sleep 60', { background: true })
  assert.equal(await sbx.commands.kill(long.pid), true)
  await assert.rejects(long.wait(), (e) => {
    assert.ok(e instanceof CommandExitError, `want CommandExitError, got ${e}`)
    assert.notEqual(e.exitCode, 0)
    return true
  })
  assert.equal(await sbx.commands.kill(long.pid), false, 'killing a finished process reports false')
})

step('pty.create, sendInput, resize, connect, kill', async () => {
  let out = ''
  const first = await sbx.pty.create({ cols: 90, rows: 20, onData: (d) => { out += dec.decode(d) } })
  await sbx.pty.sendInput(first.pid, enc.encode('stty size\n'))
  await waitFor('stty size 20 90', () => out.includes('20 90'))
  // The terminal outlives the connection that made it; a new one gets
  // what the shell prints from then on.
  await first.disconnect()
  const pty = await sbx.pty.connect(first.pid, { onData: (d) => { out += dec.decode(d) } })
  assert.equal(pty.pid, first.pid)
  await sbx.pty.sendInput(pty.pid, enc.encode('echo re$((6*7))connected\n'))
  await waitFor('output after pty.connect', () => out.includes('re42connected'))
  await sbx.pty.resize(pty.pid, { cols: 123, rows: 45 })
  await sbx.pty.sendInput(pty.pid, enc.encode('stty size\n'))
  await waitFor('stty size 45 123 after resize', () => out.includes('45 123'))
  assert.equal(await sbx.pty.kill(pty.pid), true)
  await pty.wait().then(
    (r) => assert.fail(`killed pty exited cleanly: ${JSON.stringify(r)}`),
    (e) => assert.ok(e instanceof CommandExitError, `want CommandExitError, got ${e}`))
})

step('files.write single and many, read text, bytes and stream', async () => {
  const d = `${base}/files`
  const w = await sbx.files.write(`${d}/deep/hello.txt`, 'hello from sdk')
  assert.equal(w.name, 'hello.txt')
  assert.equal(w.path, `${d}/deep/hello.txt`)
  assert.equal(await sbx.files.read(w.path), 'hello from sdk')

  const bin = new Uint8Array(256).map((_, i) => i)
  const many = await sbx.files.write([
    { path: `${d}/a.txt`, data: 'A' },
    { path: `${d}/bin`, data: bin },
  ])
  assert.deepEqual(many.map((f) => f.path), [`${d}/a.txt`, `${d}/bin`])
  assert.equal(await sbx.files.read(`${d}/a.txt`), 'A')
  assert.deepEqual(await sbx.files.read(`${d}/bin`, { format: 'bytes' }), bin)

  const stream = await sbx.files.read(`${d}/bin`, { format: 'stream' })
  const chunks = []
  for await (const c of stream) chunks.push(...c)
  assert.deepEqual(new Uint8Array(chunks), bin)
  const blob = await sbx.files.read(`${d}/bin`, { format: 'blob' })
  assert.deepEqual(new Uint8Array(await blob.arrayBuffer()), bin)

  // writeFiles is write with a list.
  const wf = await sbx.files.writeFiles([{ path: `${d}/wf1`, data: 'one' }, { path: `${d}/wf2`, data: new Blob(['two']) }])
  assert.deepEqual(wf.map((f) => f.name), ['wf1', 'wf2'])
  assert.equal(await sbx.files.read(`${d}/wf2`), 'two')

  // A stream is sent as a raw body, gzip as a compressed raw body; a gzip
  // read asks for a compressed answer.
  const big = 'compressible line\n'.repeat(20000)
  const streamed = new ReadableStream({ start(c) { c.enqueue(enc.encode(big.slice(0, 1000))); c.enqueue(enc.encode(big.slice(1000))); c.close() } })
  assert.equal((await sbx.files.write(`${d}/streamed.txt`, streamed)).path, `${d}/streamed.txt`)
  assert.equal(await sbx.files.read(`${d}/streamed.txt`), big)
  await sbx.files.write(`${d}/gz.txt`, big, { gzip: true })
  assert.equal(await sbx.files.read(`${d}/gz.txt`, { gzip: true }), big)
  assert.equal((await sbx.files.getInfo(`${d}/gz.txt`)).size, big.length)

  await assert.rejects(sbx.files.read(`${d}/missing`), FileNotFoundError)
})

step('files.makeDir, exists, getInfo, list, rename, remove', async () => {
  const d = `${base}/fs`
  assert.equal(await sbx.files.makeDir(`${d}/a/b`), true)
  assert.equal(await sbx.files.makeDir(`${d}/a/b`), false, 'makeDir of an existing dir reports false')
  assert.equal(await sbx.files.exists(`${d}/a`), true)
  assert.equal(await sbx.files.exists(`${d}/nope`), false)
  await sbx.files.write(`${d}/a/f.txt`, '12345')

  const info = await sbx.files.getInfo(`${d}/a/f.txt`)
  assert.equal(info.type, 'file')
  assert.equal(info.name, 'f.txt')
  assert.equal(info.size, 5)
  assert.equal(info.owner, 'root')
  assert.match(info.permissions, /^-rw/)
  assert.ok(info.modifiedTime instanceof Date && !isNaN(info.modifiedTime))
  assert.equal((await sbx.files.getInfo(`${d}/a`)).type, 'dir')

  const top = await sbx.files.list(d)
  assert.deepEqual(top.map((e) => e.name), ['a'])
  const deep = await sbx.files.list(d, { depth: 2 })
  assert.deepEqual(deep.map((e) => `${e.path.slice(d.length)}:${e.type}`).sort(), ['/a/b:dir', '/a/f.txt:file', '/a:dir'])

  const moved = await sbx.files.rename(`${d}/a/f.txt`, `${d}/g.txt`)
  assert.equal(moved.path, `${d}/g.txt`)
  assert.equal(await sbx.files.exists(`${d}/a/f.txt`), false)
  assert.equal(await sbx.files.read(`${d}/g.txt`), '12345')

  await sbx.files.remove(d)
  assert.equal(await sbx.files.exists(d), false)
})

step('files metadata: write, writeFiles, getInfo, list, rename', async () => {
  const d = `${base}/meta`
  const w = await sbx.files.write(`${d}/report.txt`, 'hello', { metadata: { Author: 'alice', purpose: 'demo' } })
  const want = { author: 'alice', purpose: 'demo' } // keys come back lowercased
  assert.deepEqual(w.metadata, want)
  assert.deepEqual((await sbx.files.getInfo(`${d}/report.txt`)).metadata, want)
  const moved = await sbx.files.rename(`${d}/report.txt`, `${d}/renamed.txt`)
  assert.deepEqual(moved.metadata, want)
  const many = await sbx.files.writeFiles([{ path: `${d}/a.txt`, data: 'A' }, { path: `${d}/b.txt`, data: 'B' }], { metadata: { source: 'import' } })
  assert.deepEqual(many.map((f) => f.metadata), [{ source: 'import' }, { source: 'import' }])
  const listed = Object.fromEntries((await sbx.files.list(d)).map((e) => [e.name, e.metadata]))
  assert.deepEqual(listed, { 'a.txt': { source: 'import' }, 'b.txt': { source: 'import' }, 'renamed.txt': want })
  // Set in the sandbox with setfattr, seen by the SDK.
  await sbx.commands.run(`setfattr -n user.e2b.tool -v setfattr ${d}/a.txt`)
  assert.deepEqual((await sbx.files.getInfo(`${d}/a.txt`)).metadata, { source: 'import', tool: 'setfattr' })
  // Overwriting replaces it.
  await sbx.files.write(`${d}/renamed.txt`, 'again')
  assert.equal((await sbx.files.getInfo(`${d}/renamed.txt`)).metadata, undefined)
  await assert.rejects(sbx.files.write(`${d}/bad.txt`, 'x', { metadata: { author: 'caf\u00e9' } }), /printable US-ASCII/)
})

step('files.watchDir', async () => {
  const d = `${base}/watch`
  await sbx.files.makeDir(`${d}/sub`)
  const seen = []
  const h = await sbx.files.watchDir(d, (ev) => seen.push(`${ev.name}:${ev.type}`), { recursive: true })
  await sbx.files.write(`${d}/x.txt`, 'hi')
  await sbx.files.write(`${d}/sub/y.txt`, 'yo')
  await sbx.commands.run(`chmod 600 ${d}/x.txt && mv ${d}/x.txt ${d}/z.txt && rm ${d}/z.txt`)
  const want = ['x.txt:create', 'x.txt:write', 'sub/y.txt:create', 'x.txt:chmod', 'x.txt:rename', 'z.txt:create', 'z.txt:remove']
  await waitFor(() => `watch events ${want}, saw ${seen}`, () => want.every((w) => seen.includes(w)))
  await h.stop()

  // With includeEntry each event that leaves something behind carries it;
  // allowNetworkMounts changes nothing on a local directory.
  const entries = []
  const he = await sbx.files.watchDir(d, (ev) => entries.push(ev), { includeEntry: true, allowNetworkMounts: true })
  await sbx.files.write(`${d}/entry.txt`, 'hello')
  await waitFor('a create event with its entry', () => entries.some((ev) => ev.name === 'entry.txt' && ev.type === 'create' && ev.entry))
  const created = entries.find((ev) => ev.name === 'entry.txt' && ev.entry)
  assert.equal(created.entry.path, `${d}/entry.txt`)
  assert.equal(created.entry.type, 'file')
  await he.stop()
  const before = seen.length
  await sbx.files.write(`${d}/after-stop.txt`, 'x')
  await sleep(200)
  assert.equal(seen.length, before, `events after stop: ${seen.slice(before)}`)
})

step('signed downloadUrl and uploadUrl', async () => {
  const d = `${base}/signed`
  await sbx.files.makeDir(d)
  const up = await sbx.uploadUrl(`${d}/up.txt`)
  assert.match(up, /[?&]signature=v1_/)
  const form = new FormData()
  form.append('file', new Blob(['through a signed URL']), 'up.txt')
  let r = await fetch(up, { method: 'POST', body: form })
  assert.equal(r.status, 200, await r.text())
  assert.equal(await sbx.files.read(`${d}/up.txt`), 'through a signed URL')

  r = await fetch(await sbx.downloadUrl(`${d}/up.txt`))
  assert.equal(r.status, 200)
  assert.equal(await r.text(), 'through a signed URL')
  r = await fetch(await sbx.downloadUrl(`${d}/up.txt`, { useSignatureExpiration: 60 }))
  assert.equal(await r.text(), 'through a signed URL')

  // A URL signed for one file or one direction opens nothing else.
  const other = new URL(await sbx.downloadUrl(`${d}/up.txt`))
  other.searchParams.set('path', '/etc/shadow')
  r = await fetch(other)
  assert.equal(r.status, 401, 'a signature moved to another path')
  r = await fetch(up.replace('/files?', '/files?x=1&'), { method: 'GET' })
  assert.equal(r.status, 401, 'an upload signature used to download')
  r = await fetch(`${new URL(up).origin}/files?path=${encodeURIComponent(`${d}/up.txt`)}`)
  assert.equal(r.status, 401, 'no token and no signature')
})

let failed = 0
for (const [name, fn] of steps) {
  const t0 = Date.now()
  try {
    await fn()
    console.log(`ok   ${name} (${Date.now() - t0} ms)`)
  } catch (e) {
    failed++
    console.log(`FAIL ${name}: ${e?.stack ?? e}`)
  }
}
console.log(failed ? `${failed} of ${steps.length} steps failed` : `all ${steps.length} steps passed`)
process.exit(failed ? 1 : 0)
