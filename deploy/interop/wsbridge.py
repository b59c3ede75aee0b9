# Accepts plain TCP on 127.0.0.1:LISTEN and carries each connection's bytes to a WebSocket
# server (subprotocol "mqtt", binary frames, RFC 6455), so a TCP-only MQTT test suite can
# drive a broker's WebSocket listener. Standard library only. Usage: wsbridge.py LISTEN WSPORT PATH
import base64, os, socket, struct, sys, threading

LISTEN, WSPORT, PATH = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def recvn(s, n):
  b = b""
  while len(b) < n:
    c = s.recv(n - len(b))
    if not c:
      raise EOFError
    b += c
  return b

def ws_connect():
  s = socket.create_connection(("127.0.0.1", WSPORT))
  key = base64.b64encode(os.urandom(16)).decode()
  s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
             % (PATH, WSPORT, key)).encode())
  head = b""
  while b"\r\n\r\n" not in head:
    c = s.recv(1)
    if not c:
      raise EOFError("handshake")
    head += c
  if b" 101 " not in head.split(b"\r\n")[0]:
    raise RuntimeError(head.decode(errors="replace"))
  return s

def frame(opcode, payload):
  n = len(payload)
  hdr = bytes([0x80 | opcode])
  if n < 126:
    hdr += bytes([0x80 | n])
  elif n < 65536:
    hdr += bytes([0x80 | 126]) + struct.pack("!H", n)
  else:
    hdr += bytes([0x80 | 127]) + struct.pack("!Q", n)
  mask = os.urandom(4)
  return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def tcp_to_ws(t, w, lock):
  try:
    while True:
      d = t.recv(65536)
      if not d:
        break
      with lock:
        w.sendall(frame(2, d))
  except OSError:
    pass
  try:
    with lock:
      w.sendall(frame(8, struct.pack("!H", 1000)))
  except OSError:
    pass
  try:
    w.shutdown(socket.SHUT_WR)
  except OSError:
    pass

def ws_to_tcp(w, t, lock):
  try:
    while True:
      b0, b1 = recvn(w, 2)
      op, n = b0 & 0x0F, b1 & 0x7F
      if n == 126:
        n = struct.unpack("!H", recvn(w, 2))[0]
      elif n == 127:
        n = struct.unpack("!Q", recvn(w, 8))[0]
      mask = recvn(w, 4) if b1 & 0x80 else None
      p = recvn(w, n) if n else b""
      if mask:
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(p))
      if op in (0, 1, 2):
        t.sendall(p)
      elif op == 8:
        # RFC 6455 5.5.1: answer a Close with a Close (the server waits for it).
        with lock:
          w.sendall(frame(8, p[:2]))
        break
      elif op == 9:
        with lock:
          w.sendall(frame(10, p))
  except (OSError, EOFError):
    pass
  try:
    t.shutdown(socket.SHUT_WR)
  except OSError:
    pass

def serve(t):
  try:
    w = ws_connect()
  except Exception as e:
    print("ws connect:", e, file=sys.stderr)
    t.close()
    return
  lock = threading.Lock()
  a = threading.Thread(target=tcp_to_ws, args=(t, w, lock), daemon=True)
  b = threading.Thread(target=ws_to_tcp, args=(w, t, lock), daemon=True)
  a.start(); b.start(); a.join(); b.join()
  t.close(); w.close()

ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", LISTEN)); ls.listen(64)
while True:
  c, _ = ls.accept()
  threading.Thread(target=serve, args=(c,), daemon=True).start()
