// Package netguard keeps outbound HTTP requests that a client of the API
// chose the target of (status webhooks) away from the operator's own network:
// the server-side request forgery guard. CheckURL refuses what can be refused
// from the URL alone (a scheme other than http(s), credentials in the URL, a
// literal private address); Control refuses, at connect time, every address a
// host name resolved to that is loopback, private, link-local, unspecified or
// multicast, so a name that resolves (or re-resolves) inward is caught where
// the connection is made. An operator who wants webhooks inside the network
// (tests, a receiver beside wxpush) allows private targets.
package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

// MaxURLLength is the longest URL CheckURL accepts.
const MaxURLLength = 2048

// ErrPrivate is the error, wrapped, for a target inside the operator's network.
var ErrPrivate = errors.New("private, loopback or link-local address refused")

// CheckURL returns an error saying what is wrong with raw as a webhook target,
// or nil. With allowPrivate, literal private addresses pass.
func CheckURL(raw string, allowPrivate bool) error {
	if len(raw) > MaxURLLength {
		return fmt.Errorf("longer than %d bytes", MaxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("must be an http or https URL")
	case u.Host == "" || u.Hostname() == "":
		return errors.New("has no host")
	case u.User != nil:
		return errors.New("must not carry credentials")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return errors.New("must not have a fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := parsePort(p); err != nil || n == 0 {
			return errors.New("has an invalid port")
		}
	}
	if allowPrivate {
		return nil
	}
	host := strings.ToLower(u.Hostname())
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return fmt.Errorf("%w: %s", ErrPrivate, host)
	}
	if a, err := netip.ParseAddr(host); err == nil && Inward(a) {
		return fmt.Errorf("%w: %s", ErrPrivate, host)
	}
	return nil
}

func parsePort(p string) (int, error) {
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return 0, errors.New("not a number")
		}
		n = n*10 + int(c-'0')
		if n > 65535 {
			return 0, errors.New("out of range")
		}
	}
	return n, nil
}

// Inward reports whether a is an address of the operator's own network (or
// of no network): loopback, private (RFC 1918, RFC 4193), link-local,
// unspecified, multicast, CGNAT (100.64/10) or an IPv4-mapped one of those.
func Inward(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() || cgnat.Contains(a) ||
		!a.IsValid()
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Control is a net.Dialer Control function that refuses inward addresses;
// with allowPrivate it allows everything.
func Control(allowPrivate bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		if allowPrivate {
			return nil
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("netguard: %s: %w", address, err)
		}
		if Inward(ap.Addr()) {
			return fmt.Errorf("netguard: %w: %s", ErrPrivate, ap.Addr())
		}
		return nil
	}
}

// Dialer is a dialer that applies Control.
func Dialer(allowPrivate bool) *net.Dialer {
	return &net.Dialer{Control: Control(allowPrivate)}
}
