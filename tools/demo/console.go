package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// console interleaves plain sentences with one live progress line. On a
// terminal the progress line is rewritten in place (carriage return); when
// the output is a file or a pipe, carriage returns would only garble it, so
// a progress line is printed as a normal line every pipeEvery instead.
type console struct {
	w         io.Writer
	tty       bool
	width     int           // terminal columns; lines are cut to fit, or they would wrap and break \r
	pipeEvery time.Duration // interval of progress lines when not a terminal

	mu        sync.Mutex
	shown     int // width of the progress line on screen; 0: none
	lastPiped time.Time
}

const defaultPipeEvery = 2 * time.Second

func newConsole(w io.Writer) *console {
	c := &console{w: w, pipeEvery: defaultPipeEvery}
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
			c.tty, c.width = true, int(ws.Col)
		}
	}
	return c
}

// say prints one sentence on its own line, above the progress line.
func (c *console) say(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	fmt.Fprintf(c.w, format+"\n", args...)
}

// progress shows line as the live progress line.
func (c *console) progress(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.tty {
		if now := time.Now(); now.Sub(c.lastPiped) >= c.pipeEvery {
			c.lastPiped = now
			fmt.Fprintln(c.w, line)
		}
		return
	}
	if c.width > 1 && len([]rune(line)) >= c.width {
		line = string([]rune(line)[:c.width-1])
	}
	pad := max(c.shown-len([]rune(line)), 0)
	fmt.Fprint(c.w, "\r"+line+strings.Repeat(" ", pad))
	c.shown = len([]rune(line))
}

// keep ends the progress line where it stands: the final numbers stay on
// screen and the next output starts on a new line. Without a terminal it
// prints line, so the last state is always in the output.
func (c *console) keep(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.tty {
		fmt.Fprintln(c.w, line)
		return
	}
	c.clearLocked()
	fmt.Fprintln(c.w, line)
}

func (c *console) clearLocked() {
	if c.tty && c.shown > 0 {
		fmt.Fprint(c.w, "\r"+strings.Repeat(" ", c.shown)+"\r")
	}
	c.shown = 0
}
