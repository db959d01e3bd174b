package flow

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Datagram flows (UDP, ICMP) carry each datagram as one record on the
// Conn's byte stream: a 2-byte big-endian length, then that many bytes.
const (
	DatagramHeader = 2
	MaxDatagram    = 0xffff
	// DatagramBuf is the buffer size that holds any record, prefix included.
	DatagramBuf = DatagramHeader + MaxDatagram
)

// WriteDatagram sends buf[DatagramHeader:] as one record. The caller leaves
// the first DatagramHeader bytes free, so the record goes out in one Write
// with no copy.
func WriteDatagram(w io.Writer, buf []byte) error {
	n := len(buf) - DatagramHeader
	if n < 0 || n > MaxDatagram {
		return fmt.Errorf("flow: datagram of %d bytes", n)
	}
	binary.BigEndian.PutUint16(buf, uint16(n))
	_, err := w.Write(buf)
	return err
}

// ReadDatagramLen reads the next record's length prefix. The caller then
// reads exactly that many payload bytes (io.ReadFull). Reading in two steps
// lets a flow that waits for its next datagram hold no payload buffer.
func ReadDatagramLen(r io.Reader) (int, error) {
	var hdr [DatagramHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	return int(binary.BigEndian.Uint16(hdr[:])), nil
}

// ReadDatagram reads one record into buf, which must hold MaxDatagram bytes,
// and returns its payload. A stream that ends between records returns io.EOF;
// one that ends inside a record returns io.ErrUnexpectedEOF.
func ReadDatagram(r io.Reader, buf []byte) ([]byte, error) {
	n, err := ReadDatagramLen(r)
	if err != nil {
		return nil, err
	}
	if len(buf) < n {
		return nil, fmt.Errorf("flow: datagram of %d bytes, buffer of %d", n, len(buf))
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:n], nil
}
