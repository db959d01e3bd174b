// Package usl is the Unstoppable Session Layer: authenticated, encrypted,
// resumable sessions carrying multiplexed streams over paths (TCP
// connections) that may die at any time. The full specification is
// docs/protocol.md (protocol v2); this is its summary.
//
// # Paths and handshake
//
// A path opens with the cleartext preamble "USL" + version byte (2), a
// u16-framed Noise IK message 1 (Curve25519, AES-256-GCM, BLAKE2s, the
// preamble as prologue) and a 16-byte mac1: keyed BLAKE2s over the bytes
// before it, keyed by the listener's public key, as in WireGuard. The
// initiator's payload (hello) carries the session id, both epochs as it
// knows them, the last in-order seq it received, a per-process strictly
// increasing timestamp, its stream window and max frame, a path id and a
// JOIN flag. The listener answers only a message with a valid mac1 from an
// allowed key whose timestamp is newer than any it accepted from that key
// before; garbage, a wrong listener key, an unknown key and a replay get
// silence (the connection is closed without a byte). A peer of another
// version gets the listener's preamble back, so both sides report "peer
// speaks USL vN, this build speaks v2". The reply holds a status, the
// listener's epoch, its last in-order seq, window and max frame. The
// dialer then sends its first record at once: only when it authenticates
// does the listener attach the path, create, announce or fence a session
// (key confirmation), so a replayed message 1 changes nothing.
//
// The listener bounds what unauthenticated connections cost: a token
// bucket per /32 or /64 source in a fixed table that evicts rather than
// refuses, a pool of connections waiting for message 1 in which the newest
// evicts the oldest (FirstMessageTimeout 1 s), 128 handshake slots for
// mac1-valid messages only, and one aggregated log line per interval for
// all rejections.
//
// # Records and frames
//
// After the handshake a path carries records: u16 length, then an
// AES-256-GCM ciphertext with a counter nonce. The plaintexts form a byte
// stream of frames, each a 32-byte header
//
//	0 type u8 | 1 flags u8 | 2 reserved u16 | 4 stream u32
//	8 seq u64 | 16 ack u64 | 24 sseq u32 | 28 length u32 | 32 payload
//
// Types: DATA, OPEN, ACCEPT, RESET, FIN, WINDOW, CLOSE are sequenced (a
// 64-bit session seq, kept in the replay buffer until acked); ACK, PING,
// PONG, SACK and REKEY are not. Every frame carries the cumulative ack;
// stream frames carry their per-stream sseq, which the receiver checks.
// A full DATA frame's payload (MaxFrame 65504: with its header, one 64 KiB
// buffer) is exactly one record.
// Paths rekey in band with a fresh X25519 exchange after RekeyInterval
// (120 s) or RekeyRecords (2^30), without stalling data.
//
// # Resume and fencing
//
// The replay buffer is freed only by USL acks. After a reconnect each side
// resends everything past the peer's recv seq from the handshake; the
// receiver drops seqs it already has. Each process has a random epoch. A
// key-confirmed new session from a key whose other sessions carry another
// epoch fences those (listener); a resume the responder does not know (it
// restarted) fences the dialer's incarnation: its streams fail with
// ErrPeerRestarted and a fresh incarnation starts with a new session id.
//
// # Timers (defaults)
//
// AckDelay 10 ms (or at once past min(64 KiB, window/4) unacked bytes),
// KeepaliveInterval 500 ms, DeadInterval 2 s, reconnect 50 ms doubling
// with jitter to 1 s, HandshakeTimeout 5 s, FirstMessageTimeout 1 s,
// RejectLogInterval 10 s, RekeyInterval 120 s, SessionTimeout off, Close
// waits at most 5 s for the ack of its CLOSE.
//
// # Limits
//
// ReplayBuffer 32 MiB per session (writers block when full), RecvBuffer
// 64 MiB of receive buffers per session counted by allocation,
// ControlBuffer 2 MiB of unacked control frames the peer caused,
// StreamWindow 256 KiB credit per stream to start with, grown for a fast
// reader up to MaxStreamWindow 4 MiB (within RecvBuffer/4 for all streams
// of a session), MaxStreams 4096, MaxFrame 65504
// (at least 4096), MaxSessionsPerKey 4, MaxPathsPerSession 8,
// PendingHandshakes 512, HandshakeRate 10/s per source prefix. Every
// default is an exported constant in config.go.
package usl
