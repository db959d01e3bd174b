package usl_test

import (
	"context"
	"fmt"
	"io"
	"log"

	"github.com/usltun/usltun/usl"
)

// A listener exports an echo service; a dialer opens a stream to it. The
// stream survives path failures: if the TCP connection dies, the session
// reconnects and resends, and neither side sees an error.
func Example() {
	serverKey, _ := usl.GeneratePrivateKey()
	clientKey, _ := usl.GeneratePrivateKey()

	l, err := usl.Listen("tcp", "127.0.0.1:0", usl.Config{
		PrivateKey: serverKey,
		PeerKeys:   []usl.PublicKey{clientKey.Public()},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	go func() {
		s, err := l.Accept(context.Background())
		if err != nil {
			return
		}
		for {
			st, err := s.AcceptStream(context.Background())
			if err != nil {
				return
			}
			if string(st.Descriptor()) != "echo" {
				st.Reject(usl.ResetForbidden)
				continue
			}
			st.Accept()
			go func() {
				io.Copy(st, st)
				st.CloseWrite()
			}()
		}
	}()

	s, err := usl.Dial(context.Background(), l.Addr().String(), usl.Config{
		PrivateKey: clientKey,
		PeerKeys:   []usl.PublicKey{serverKey.Public()},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	st, err := s.OpenStream(context.Background(), []byte("echo"))
	if err != nil {
		log.Fatal(err)
	}
	st.Write([]byte("hello"))
	st.CloseWrite()
	reply, _ := io.ReadAll(st)
	fmt.Println(string(reply))
	// Output: hello
}
