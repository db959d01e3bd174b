package usl

import "time"

// entry is one sequenced frame, encoded (header and payload), kept until
// the peer acks it. The replay buffer is also the send queue: each path
// keeps a cursor into it, so a retransmission after a reconnect is just a
// cursor moved back.
type entry struct {
	buf  *[]byte
	data int // stream payload bytes, counted against Config.ReplayBuffer
	ctl  int // allocated bytes of a control frame made for the peer's input, counted against Config.ControlBuffer

	// Multipath bookkeeping (multipath.go). Bits are path slots.
	st        *Stream   // the stream whose scheduler decides; nil for session frames
	mask      uint8     // slots that must carry it; 0: not yet scheduled
	sent      uint8     // slots that carried it since it was last scheduled
	sacked    bool      // the peer holds it past a gap (SACK): never sent again
	again     bool      // rescheduled after a path died or stalled: a send counts as retransmitted
	firstSent time.Time // when a path first carried it
}

// replayQueue is a FIFO of entries with consecutive seqs. It reuses its
// backing array, so steady-state queueing allocates nothing.
type replayQueue struct {
	e    []entry
	head int
}

func (q *replayQueue) len() int { return len(q.e) - q.head }

func (q *replayQueue) push(x entry) {
	if q.head > 0 && len(q.e) == cap(q.e) {
		n := copy(q.e, q.e[q.head:])
		clear(q.e[n:])
		q.e = q.e[:n]
		q.head = 0
	}
	q.e = append(q.e, x)
}

func (q *replayQueue) at(i int) *entry { return &q.e[q.head+i] }

func (q *replayQueue) pop() entry {
	x := q.e[q.head]
	q.e[q.head] = entry{}
	q.head++
	if q.head == len(q.e) {
		q.e = q.e[:0]
		q.head = 0
	}
	return x
}
