package templates

import (
	"context"
)

// Session checks the messages of one request (a batch), reading each app's list
// from Redis once instead of once per message. Not safe for concurrent use; use
// one per request.
type Session struct {
	c     *Cache
	lists map[string]*entry
	errs  map[string]error
}

// Session returns a new Session on the cache.
func (c *Cache) Session() *Session {
	return &Session{c: c, lists: map[string]*entry{}, errs: map[string]error{}}
}

// Check is Cache.Check with the app's list memoised for the session. An unknown
// template id falls back to Cache.Check, which may refetch the list.
func (s *Session) Check(ctx context.Context, app, templateID string, data map[string]string) (*Problem, error) {
	if err, failed := s.errs[app]; failed {
		return nil, err
	}
	e, ok := s.lists[app]
	if !ok {
		var err error
		if e, err = s.c.load(ctx, app, s.c.cfg.TTL, true); err != nil {
			s.errs[app] = err
			return nil, err
		}
		s.lists[app] = e
	}
	if t, found := findTemplate(e.Templates, templateID); found && templateID != "" {
		return checkData(t, data), nil
	}
	return s.c.Check(ctx, app, templateID, data)
}
