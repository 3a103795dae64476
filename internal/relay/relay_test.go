package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestForwardPassesWeChatsRequestAndReplyUnchanged(t *testing.T) {
	const query = "signature=abc&timestamp=1&nonce=2&openid=o%2B1&encrypt_type=aes&msg_signature=def"
	body := []byte("<xml><Encrypt><![CDATA[x+y/z==]]></Encrypt></xml>")
	reply := []byte("<xml><MsgType><![CDATA[text]]></MsgType></xml>")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ := io.ReadAll(r.Body)
		if r.URL.RawQuery != query || !bytes.Equal(got, body) || r.Header.Get("Content-Type") != "text/xml" {
			t.Errorf("upstream got %s %q %q %q", r.Method, r.URL.RawQuery, got, r.Header.Get("Content-Type"))
		}
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		_, _ = w.Write(reply)
	}))
	defer up.Close()
	reg := prometheus.NewRegistry()
	r := New(Config{}, NewMetrics(reg, []string{"a"}))
	rep, err := r.Forward(context.Background(), Request{App: "a", Upstream: up.URL + "/wx", RawQuery: query, ContentType: "text/xml", Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rep.Body, reply) || rep.ContentType != "application/xml; charset=utf-8" {
		t.Fatalf("reply %q %q", rep.Body, rep.ContentType)
	}
	if n := testutil.ToFloat64(r.metrics.Requests.WithLabelValues("a", ResultOK)); n != 1 {
		t.Fatalf("ok count %v", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %v", problems, err)
	}
}

func TestForwardBadUpstreams(t *testing.T) {
	hang := make(chan struct{})
	tests := []struct {
		name    string
		handler http.HandlerFunc
		result  string
	}{
		{"hangs", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}, ResultTimeout},
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }, ResultStatus5xx},
		{"403", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 403) }, ResultStatus4xx},
		{"10 MB body", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(make([]byte, 10<<20)) }, ResultTooLarge},
		{"redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }, ResultRedirect},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var followed bool
			mux := http.NewServeMux()
			mux.HandleFunc("/wx", tt.handler)
			mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { followed = true })
			up := httptest.NewServer(mux)
			defer up.Close()
			if tt.result == ResultTimeout {
				defer close(hang) // before up.Close, which waits for the handler
			}
			r := New(Config{Timeout: 300 * time.Millisecond}, NewMetrics(prometheus.NewRegistry(), []string{"a"}))
			start := time.Now()
			_, err := r.Forward(context.Background(), Request{App: "a", Upstream: up.URL + "/wx", RawQuery: "signature=x", Body: []byte("<xml/>")})
			var re *Error
			if !errors.As(err, &re) || re.Result != tt.result {
				t.Fatalf("err = %v, want result %s", err, tt.result)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("took %v: past the relay timeout", took)
			}
			if followed {
				t.Fatal("the redirect was followed")
			}
			if n := testutil.ToFloat64(r.metrics.Requests.WithLabelValues("a", tt.result)); n != 1 {
				t.Fatalf("%s count %v", tt.result, n)
			}
		})
	}
}

func TestCopyDropsBeyondItsBound(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	defer up.Close()
	defer close(release)
	r := New(Config{MaxCopies: 1}, NewMetrics(prometheus.NewRegistry(), []string{"a"}))
	req := Request{App: "a", Upstream: up.URL, Body: []byte("<xml/>")}
	r.Copy(req)
	<-arrived
	r.Copy(req) // the first still holds the only slot
	if n := testutil.ToFloat64(r.metrics.Requests.WithLabelValues("a", ResultDropped)); n != 1 {
		t.Fatalf("dropped = %v, want 1", n)
	}
}

// A failed relay's log names the upstream by scheme://host: the URL's query
// is WeChat's (openid, signatures), and a client error would quote it.
func TestFailureLogsNoQuery(t *testing.T) {
	var logs bytes.Buffer
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	upURL := up.URL
	up.Close() // refused
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://10.9.9.9/elsewhere?openid=oSecretOpenID", http.StatusFound)
	}))
	defer redirect.Close()
	r := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, nil)
	const query = "signature=sig0123456789&timestamp=1&nonce=2&openid=oSecretOpenID&msg_signature=msig0123456789"
	for _, u := range []string{upURL + "/wx?tenant=t1", redirect.URL + "/wx"} {
		if _, err := r.Forward(context.Background(), Request{App: "a", Upstream: u, RawQuery: query}); err == nil {
			t.Fatalf("relay to %s succeeded", u)
		} else if strings.Contains(err.Error(), "oSecretOpenID") {
			t.Errorf("the error quotes the query: %v", err)
		}
	}
	for _, leak := range []string{"oSecretOpenID", "sig0123456789", "tenant=t1", "/wx"} {
		if strings.Contains(logs.String(), leak) {
			t.Errorf("relay logs contain %q:\n%s", leak, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "upstream="+upURL) {
		t.Errorf("relay logs do not name the upstream's origin %s:\n%s", upURL, logs.String())
	}
}

// Any 2xx is a reply: a 204 is WeChat's empty answer.
func TestNoContentIsAReply(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer up.Close()
	rep, err := New(Config{}, nil).Forward(context.Background(), Request{App: "a", Upstream: up.URL})
	if err != nil || len(rep.Body) != 0 {
		t.Fatalf("204: %+v, %v; want an empty reply", rep, err)
	}
}
