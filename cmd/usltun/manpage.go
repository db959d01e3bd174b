package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/alecthomas/kong"
)

// manCmd prints usltun(1) in roff, written from the same kong model as
// --help and the completions, so the page never lists a flag that does not
// exist. `make deb` installs its output.
type manCmd struct{}

func (manCmd) Run(o cmdIO, k *kong.Kong) error {
	writeMan(o.stdout, k.Model)
	return nil
}

// roff escapes text for a roff line: backslashes, and a leading dot or
// quote that would read as a request.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func writeMan(w io.Writer, app *kong.Application) {
	fmt.Fprintf(w, ".TH USLTUN 1 \"\" \"usltun %s\" \"User Commands\"\n", roff(version))
	fmt.Fprintf(w, ".SH NAME\nusltun \\- %s\n", roff(app.Help))
	fmt.Fprintf(w, ".SH SYNOPSIS\n.B usltun\n.I command\n[\n.I flags\n]\n")
	fmt.Fprintf(w, ".SH DESCRIPTION\n%s\n", roff("usltun creates a TUN device whose TCP and UDP flows are terminated in a local network stack "+
		"and carried as streams of one resumable, encrypted session to a peer, which dials the real destinations. "+
		"A dying link shows up to applications as a pause, never as an error."))
	fmt.Fprintf(w, ".SH COMMANDS\n")
	for _, n := range app.Children {
		if n.Hidden || n.Type != kong.CommandNode {
			continue
		}
		fmt.Fprintf(w, ".SS \"%s\"\n", roff(n.Summary()))
		fmt.Fprintf(w, "%s\n", roff(n.Help))
		for _, f := range n.Flags {
			if f.Hidden {
				continue
			}
			fmt.Fprintf(w, ".TP\n.B \\-\\-%s", roff(f.Name))
			if !f.IsBool() {
				fmt.Fprintf(w, "=\\fI%s\\fR", roff(f.FormatPlaceHolder()))
			}
			fmt.Fprintf(w, "\n%s", roff(f.Help))
			if f.HasDefault && f.Default != "" {
				fmt.Fprintf(w, " Default: %s.", roff(f.Default))
			}
			if f.Required {
				fmt.Fprintf(w, " Required.")
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, ".SH EXIT STATUS\n.TP\n0\nSuccess.\n.TP\n1\nAn error at run time.\n.TP\n2\n%s\n",
		roff("A usage or validation error: one line says what is wrong, the next which --help to read."))
	fmt.Fprintf(w, ".SH FILES\n.TP\n/etc/usltun/\\fINAME\\fR.toml\n%s\n",
		roff("Options of usltun up for the systemd unit usltun@NAME.service; keys are flag names. See /etc/usltun/example.toml."))
	fmt.Fprintf(w, ".SH SEE ALSO\n.BR wg (8),\n.BR systemd.service (5)\n")
}
