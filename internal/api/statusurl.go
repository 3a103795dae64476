package api

import (
	"fmt"

	"github.com/wxpush/wxpush/internal/netguard"
)

// statusURL is where a message of app with the request's status_url (raw,
// "" = none) has its state changes POSTed: raw, else the app's default. A URL
// the SSRF guard refuses, or any URL for an app that cannot sign its webhooks,
// is a 400 naming status_url. The message never quotes the URL: its query may
// hold the receiver's token.
func (s *Server) statusURL(app, raw string) (string, *apiError) {
	a, _ := s.app(app)
	if raw != "" {
		if err := netguard.CheckURL(raw, s.webhookAllowPrivate); err != nil {
			return "", badField("status_url", "invalid_status_url", "status_url "+err.Error())
		}
	}
	u := raw
	if u == "" {
		u = a.StatusURL
	}
	if u != "" && !a.WebhookSecret {
		return "", badField("status_url", "no_webhook_secret",
			fmt.Sprintf("app %q has no webhook_secret, so its status webhooks cannot be signed", app))
	}
	return u, nil
}
