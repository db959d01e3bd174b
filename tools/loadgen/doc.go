// Package loadgen generates verifiable TCP traffic and reports, per flow,
// what an application would have seen: bytes, rate, stalls, every error with
// its errno, and how long after a network heal the first new byte arrived.
// tools/uslload is its command line; tests use it directly.
//
// # Protocol
//
// One TCP connection per flow. The client opens it with a fixed 80-byte
// header (big-endian):
//
//	off len  field
//	  0   4  magic "ULG1"
//	  4   1  kind: 1 flow, 2 report request
//	  5   1  mode: 1 bulk, 2 half-close, 3 request/response
//	  6   1  directions: bit 0 up (client→server), bit 1 down (server→client)
//	  7   1  flags: bit 0 verify (hash and compare)
//	  8  16  run id (random per client run)
//	 24   4  flow number
//	 28   8  seed
//	 36   8  up bytes   (bulk: 0 = until duration)
//	 44   8  down bytes (bulk: 0 = until duration)
//	 52   4  duration, ms (bulk: stop sending after it; 0 = bytes only)
//	 56   4  idle, ms: both ends stay silent this long before the transfer
//	 60   4  request size (rr)
//	 64   4  response size (rr)
//	 68  12  reserved, zero
//
// Bulk: each enabled direction carries a deterministic pseudo-random stream
// (AES-128-CTR keystream keyed by seed, flow and direction) and ends with a
// FIN (shutdown(SHUT_WR)); a disabled direction is just a FIN. Half-close:
// the same, but the server starts its reply only after the client's FIN.
// Request/response: the client writes request-size bytes of its stream, the
// server answers with response-size bytes of its own, repeatedly; the client
// ends with a FIN between requests.
//
// The streams are self-describing, so the receiver checks every byte against
// the expected stream (and reports the offset of the first difference) and
// both ends hash what they sent and received. To compare the hashes the
// client opens one more connection after its flows end, of kind "report",
// followed by a u32 count and that many u32 flow numbers: the flows it
// expects the server to know. The server waits (bounded by the duration
// field) until those flows have ended on its side and answers with a u32
// length and a JSON array of its per-flow EndReports. Because it is a fresh
// connection, the report survives faults that killed the flows themselves.
//
// Both ends timestamp reads with the wall clock of the same machine, so a
// heal time taken by a fault injector (MarkHeal, or a heal file) can be
// compared with either end's receive timeline.
package loadgen
