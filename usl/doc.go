// Package usl is the Unstoppable Session Layer: authenticated, encrypted,
// resumable sessions carrying multiplexed streams over paths (TCP
// connections) that may die at any time. The full specification is
// docs/protocol.md; this is its summary.
//
// # Paths and handshake
//
// A path opens with the cleartext preamble "USL" + version byte (v1), then
// a Noise IK handshake (Curve25519, AES-256-GCM, BLAKE2s) with the preamble
// as prologue. Each message is prefixed by a u16 length. The initiator's
// payload (hello) carries the session id, both epochs as it knows them, the
// last in-order seq it received, its stream window and its max frame. The
// responder answers with its own preamble and a Noise message whose payload
// (reply) holds a status, its epoch, its last in-order seq, window and max
// frame. A version mismatch gets the responder's preamble back, so both
// sides report "peer speaks USL vN, this build speaks v1". A key outside
// the allowlist, a resume by a key other than the session's owner, garbage
// or a handshake taking over 5 s is rejected before any per-session state
// exists, with one log line per rejection; handshakes are rate limited per
// source IP.
//
// # Records and frames
//
// After the handshake a path carries records: u16 length, then a
// AES-256-GCM ciphertext with a counter nonce. The plaintexts form a
// byte stream of frames, each a 28-byte header
//
//	0 type u8 | 1 flags u8 | 2 reserved u16 | 4 stream u32
//	8 seq u64 | 16 ack u64 | 24 length u32 | 28 payload
//
// Types: DATA, OPEN, ACCEPT, RESET, FIN, WINDOW, CLOSE are sequenced (a
// 64-bit session seq, kept in the replay buffer until acked); ACK, PING,
// PONG are not. Every frame carries the cumulative ack.
//
// # Resume and fencing
//
// The replay buffer is freed only by USL acks. After a reconnect each side
// resends everything past the peer's recv seq from the handshake; the
// receiver drops seqs it already has. Each process has a random epoch. A
// new session from a key whose other sessions carry another epoch fences
// those (listener); a resume the responder does not know (it restarted)
// fences the dialer's incarnation: its streams fail with ErrPeerRestarted
// and a fresh incarnation starts with a new session id.
//
// # Timers (defaults)
//
// AckDelay 10 ms (or at once past min(64 KiB, window/4) unacked bytes),
// KeepaliveInterval 500 ms, DeadInterval 2 s, reconnect 50 ms doubling
// with jitter to 1 s, HandshakeTimeout 5 s, SessionTimeout off, Close
// waits at most 5 s for the ack of its CLOSE.
//
// # Limits
//
// ReplayBuffer 32 MiB per session (writers block when full), StreamWindow
// 256 KiB credit per stream, MaxStreams 4096, MaxFrame 64 KiB.
package usl
