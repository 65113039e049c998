// A js-libp2p peer for tests/interop/test_js_libp2p.py.
//
//   node js_peer.mjs <full multiaddr of the Python node, ending in /p2p/<peer id>> [--plaintext]
//
// Default mode: TCP + Noise + Yamux. Dials the address, runs identify and ping on that connection,
// prints one JSON line with what it learned (plus its own peer id and listen addresses, so the Python
// side can ping back), then keeps the connection open until stdin closes.
// --plaintext: offers only the plaintext security protocol; prints one JSON line saying whether the
// dial was refused, and exits.
// Everything goes to stdout as single JSON lines; any failure is {"ok": false, "error": ...}, exit 1.

// Node 20 lacks Promise.withResolvers (Node 22 has it), which libp2p 3.x uses. It must exist before
// libp2p's modules load, hence the dynamic imports below.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { plaintext } = await import('@libp2p/plaintext')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { multiaddr } = await import('@multiformats/multiaddr')

const args = process.argv.slice(2)
const target = args.find((a) => !a.startsWith('--'))
const usePlaintext = args.includes('--plaintext')

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function describe (err) {
  const parts = []
  for (let e = err; e != null && parts.length < 5; e = e.cause) {
    parts.push(`${e.name ?? 'Error'}: ${e.message ?? String(e)}`)
  }
  if (err instanceof AggregateError) {
    for (const e of err.errors) parts.push(describe(e))
  }
  return parts.join(' <- ')
}

if (target == null) {
  emit({ ok: false, error: 'usage: node js_peer.mjs <multiaddr> [--plaintext]' })
  process.exit(2)
}

const node = await createLibp2p({
  addresses: { listen: usePlaintext ? [] : ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [usePlaintext ? plaintext() : noise()],
  streamMuxers: [yamux()],
  services: {
    // Identify runs when we ask, on the connection we dialed, so the result is the Python node's.
    identify: identify({ runOnConnectionOpen: false }),
    ping: ping()
  }
})

const deadline = (ms) => AbortSignal.timeout(ms)

try {
  const addr = multiaddr(target)
  if (usePlaintext) {
    try {
      const conn = await node.dial(addr, { signal: deadline(10_000) })
      emit({ ok: true, mode: 'plaintext', refused: false, encryption: conn.encryption, multiplexer: conn.multiplexer })
    } catch (err) {
      emit({ ok: true, mode: 'plaintext', refused: true, error: describe(err) })
    }
  } else {
    const conn = await node.dial(addr, { signal: deadline(10_000) })
    const id = await node.services.identify.identify(conn, { signal: deadline(10_000) })
    const rtts = []
    for (let i = 0; i < 3; i++) {
      rtts.push(await node.services.ping.ping(conn.remotePeer, { signal: deadline(10_000) }))
    }
    emit({
      ok: true,
      mode: 'noise',
      peer_id: node.peerId.toString(),
      listen_addrs: node.getMultiaddrs().map(String),
      connection: {
        remote_peer: conn.remotePeer.toString(),
        encryption: conn.encryption,
        multiplexer: conn.multiplexer,
        direction: conn.direction
      },
      identify: {
        peer_id: id.peerId.toString(),
        agent_version: id.agentVersion ?? null,
        protocol_version: id.protocolVersion ?? null,
        protocols: id.protocols,
        listen_addrs: id.listenAddrs.map(String),
        observed_addr: id.observedAddr == null ? null : String(id.observedAddr),
        signed_peer_record: id.signedPeerRecord != null
      },
      ping_rtts_ms: rtts
    })
    // Stay up (and connected) until the test closes our stdin, so it can ping and identify us back.
    await new Promise((resolve) => {
      process.stdin.on('end', resolve)
      process.stdin.on('close', resolve)
      process.stdin.resume()
    })
    emit({ ok: true, mode: 'noise', still_connected: node.getConnections(conn.remotePeer).length > 0 })
  }
} catch (err) {
  emit({ ok: false, error: describe(err) })
  await node.stop()
  process.exit(1)
}
await node.stop()
process.exit(0)
