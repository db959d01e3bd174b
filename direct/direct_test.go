package direct

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
)

func TestTCPAndOutcomes(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dialer{}.DialFlow(ctx, flow.Dest{Proto: flow.TCP, Addr: ln.Addr().(*net.TCPAddr).AddrPort()})
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hi"))
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "hi" {
		t.Fatalf("echo %q, %v", b, err)
	}
	c.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	if _, err := (Dialer{}).DialFlow(ctx, flow.Dest{Proto: flow.TCP, Addr: addr}); !errors.Is(err, flow.ErrRefused) {
		t.Errorf("closed port: %v", err)
	}
	if _, err := (Dialer{}).DialFlow(ctx, flow.Dest{Proto: flow.ICMP, Addr: netip.MustParseAddrPort("127.0.0.1:0")}); !errors.Is(err, flow.ErrUnreachable) {
		t.Errorf("icmp: %v", err)
	}
}

func TestUDPRecords(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dialer{}.DialFlow(ctx, flow.Dest{Proto: flow.UDP, Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, flow.DatagramBuf)
	copy(buf[flow.DatagramHeader:], "ping")
	if err := flow.WriteDatagram(c, buf[:flow.DatagramHeader+4]); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	p, err := flow.ReadDatagram(c, make([]byte, flow.MaxDatagram))
	if err != nil || string(p) != "re:ping" {
		t.Fatalf("reply %q, %v", p, err)
	}
	if _, err := c.Write([]byte("no header")); err == nil {
		t.Error("a write that is not a record was sent")
	}
}
