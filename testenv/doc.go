// Package testenv builds a small multi-host lab out of Linux network
// namespaces, for tests and demos that need real kernel networking.
//
// Each Host is a named network namespace with its own kernel network stack,
// loopback up. Link joins two hosts with a veth pair. Faults are produced by
// the kernel, never simulated in Go:
//
//   - Blackhole, Loss and ResetTCP are nftables rules on the ingress hook of
//     both veth ends (netdev family), so a sender's own stack sees nothing
//     unusual (no EPERM from an output drop) and packets vanish "on the wire";
//   - Down/Up/Flap change the veth link state;
//   - RateLimit installs a tbf qdisc on both ends;
//   - Delay holds packets in the kernel's netfilter queue for a delay with
//     jitter (the kernel has no netem; see delay.go);
//   - ChangeAddress moves a host to a new address, as a roaming client does.
//
// Every fault is idempotent and reversible; Heal undoes them all. Link may
// join the same two hosts several times, each link on its own subnets;
// NewMultiLink builds the multipath lab A=B—C that way.
//
// Everything the lab creates is removed through the TB's Cleanup, also when a
// test fails or panics. Namespace names carry a per-process prefix
// ("tenv<pid>-"), and the first NewHost of a process removes namespaces left
// behind by dead processes of the same family.
//
// Tests pass their *testing.T; tools (make demo) use NewLab, which implements
// TB on its own and runs the cleanups on Close.
package testenv
