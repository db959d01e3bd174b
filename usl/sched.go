package usl

// scheduler decides, frame by frame, which paths carry the session's
// sequenced frames. Every attached path has its own cursor into the replay
// buffer and asks the scheduler about each frame it reaches; the receiver
// orders by session seq and drops duplicates, so a frame sent on several
// paths (mirroring) or on alternating paths (load balancing) is delivered
// exactly once. It is called with the session lock held and must not block.
type scheduler interface {
	carries(p *path, seq uint64, paths []*path) bool
}

// failover sends everything on the newest path. Attaching a path closes the
// older ones, so the newest is the only one; this release ships only this.
type failover struct{}

func (failover) carries(p *path, _ uint64, paths []*path) bool {
	return len(paths) > 0 && paths[len(paths)-1] == p
}
