package testenv

import (
	"net"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSServer answers A and AAAA queries from a fixed table, over UDP: a
// resolver that exists only inside the lab. A name not in the table gets
// NXDOMAIN; a known name without an address of the asked family gets an
// empty answer (NODATA).
type DNSServer struct {
	pc      net.PacketConn
	records map[string][]netip.Addr
	wg      sync.WaitGroup
}

// ServeDNS answers on pc until Close. Names are matched case-insensitively,
// with or without the trailing dot.
func ServeDNS(pc net.PacketConn, records map[string][]netip.Addr) *DNSServer {
	s := &DNSServer{pc: pc, records: map[string][]netip.Addr{}}
	for name, addrs := range records {
		s.records[strings.ToLower(strings.TrimSuffix(name, "."))] = addrs
	}
	s.wg.Add(1)
	go s.serve()
	return s
}

// Addr is where the server listens.
func (s *DNSServer) Addr() net.Addr { return s.pc.LocalAddr() }

// Close stops the server.
func (s *DNSServer) Close() error {
	err := s.pc.Close()
	s.wg.Wait()
	return err
}

func (s *DNSServer) serve() {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp, ok := s.answer(buf[:n]); ok {
			s.pc.WriteTo(resp, from)
		}
	}
}

func (s *DNSServer) answer(query []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	addrs, known := s.records[name]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
	for _, a := range addrs {
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			b.AResource(rr, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6() && !a.Is4In6():
			b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	resp, err := b.Finish()
	return resp, err == nil
}
