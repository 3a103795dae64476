package netguard

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCheckURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://hooks.example.com/wxpush":     "",
		"http://hooks.example.com:8443/a?b=c":  "",
		"ftp://hooks.example.com/":             "http or https",
		"javascript:alert(1)":                  "http or https",
		"https://":                             "no host",
		"https://user:pw@hooks.example.com/":   "credentials",
		"https://hooks.example.com/#frag":      "fragment",
		"https://hooks.example.com:99999/":     "invalid port",
		"http://127.0.0.1:8080/":               "refused",
		"http://localhost/":                    "refused",
		"http://[::1]/":                        "refused",
		"http://10.1.2.3/":                     "refused",
		"http://192.168.0.1/":                  "refused",
		"http://169.254.169.254/latest/":       "refused",
		"http://[::ffff:127.0.0.1]/":           "refused",
		"http://0.0.0.0/":                      "refused",
		"http://100.64.0.1/":                   "refused",
		"https://" + strings.Repeat("a", 2100): "longer",
	} {
		err := CheckURL(raw, false)
		switch {
		case want == "" && err != nil:
			t.Errorf("CheckURL(%q) = %v, want nil", raw, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("CheckURL(%q) = %v, want an error with %q", raw, err, want)
		}
	}
	if err := CheckURL("http://127.0.0.1:8080/", true); err != nil {
		t.Errorf("allowPrivate: %v", err)
	}
	if err := CheckURL("ftp://127.0.0.1/", true); err == nil {
		t.Error("allowPrivate still checks the scheme")
	}
}

// A host name that resolves inward passes CheckURL (it cannot know) but is
// refused where the connection is made.
func TestControlRefusesResolvedLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	target := "http://localhost:" + port + "/" // resolved by the system, like any name

	guarded := &http.Client{Transport: &http.Transport{DialContext: Dialer(false).DialContext}}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, target, nil)
	_, err := guarded.Do(req)
	if !errors.Is(err, ErrPrivate) {
		t.Fatalf("guarded GET %s: err = %v, want ErrPrivate", target, err)
	}
	open := &http.Client{Transport: &http.Transport{DialContext: Dialer(true).DialContext}}
	resp, err := open.Get(srv.URL)
	if err != nil {
		t.Fatalf("allowPrivate GET: %v", err)
	}
	resp.Body.Close()
}
