package wechatsim

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Outcome is what the simulator does with a valid send.
type Outcome string

// The outcomes a Rule can choose, for template and subscribe sends alike.
// Those answered errcode 0 are "accepted"; the callback they push (if any) is
// noted beside each as the template Status; subscribeResult has the
// subscribe event's ErrorCode and ErrorStatus.
const (
	OutcomeSuccess           Outcome = "success"            // errcode 0; callback Status "success"
	OutcomeUserBlock         Outcome = "user_block"         // errcode 0; callback Status "failed:user block"
	OutcomeSystemFailed      Outcome = "system_failed"      // errcode 0; callback Status "failed: system failed"
	OutcomeNoCallback        Outcome = "no_callback"        // errcode 0; no callback ever
	OutcomeDuplicateCallback Outcome = "duplicate_callback" // errcode 0; the success callback is pushed twice
	// OutcomeCallbackFirst answers errcode 0 only after the success callback
	// was pushed and its reply (retries included) awaited, ignoring
	// CallbackDelay: the callback arrives before the sender can store the msgid.
	OutcomeCallbackFirst  Outcome = "callback_first"
	OutcomeSystemBusy     Outcome = "system_busy"     // errcode -1 "system error"
	OutcomeNotFollowing   Outcome = "not_following"   // errcode 43004 "require subscribe"
	OutcomeFrequencyLimit Outcome = "frequency_limit" // errcode 45011
	OutcomeDailyQuota     Outcome = "daily_quota"     // errcode 45009
	OutcomeTokenInvalid   Outcome = "token_invalid"   // errcode 40001 whatever token was used
	OutcomeHTTP500        Outcome = "http_500"        // HTTP 500, empty body; nothing is sent
	OutcomeHang           Outcome = "hang"            // never answers until the request context ends; nothing is sent
	// OutcomeReplyLost delivers the message (and its success callback) but
	// answers HTTP 500: the "send may have happened" case of a transport error,
	// which only client_msg_id protects against.
	OutcomeReplyLost Outcome = "reply_lost"
	// OutcomeUserRefused answers errcode 43101 "user refuse to accept the
	// msg": the user never subscribed to the template or refused it, the
	// everyday refusal of subscribe sends. Nothing is sent.
	OutcomeUserRefused Outcome = "user_refused"
)

// outcomes lists every Outcome in the order error messages show them.
var outcomes = []Outcome{
	OutcomeSuccess, OutcomeUserBlock, OutcomeSystemFailed, OutcomeNoCallback,
	OutcomeDuplicateCallback, OutcomeCallbackFirst, OutcomeSystemBusy,
	OutcomeNotFollowing, OutcomeFrequencyLimit, OutcomeDailyQuota,
	OutcomeTokenInvalid, OutcomeHTTP500, OutcomeHang, OutcomeReplyLost,
	OutcomeUserRefused,
}

func (o Outcome) valid() bool {
	for _, known := range outcomes {
		if o == known {
			return true
		}
	}
	return false
}

// delivered reports whether the user gets the message.
func (o Outcome) delivered() bool {
	switch o {
	case OutcomeSuccess, OutcomeNoCallback, OutcomeDuplicateCallback, OutcomeCallbackFirst, OutcomeReplyLost:
		return true
	}
	return false
}

// accepted reports whether WeChat took the message (and so allocated a msgid),
// whatever the reply says.
func (o Outcome) accepted() bool {
	switch o {
	case OutcomeUserBlock, OutcomeSystemFailed:
		return true
	}
	return o.delivered()
}

// callback returns the Status of the result event and how many times it is
// pushed; zero copies means no callback.
func (o Outcome) callback() (status string, copies int) {
	switch o {
	case OutcomeSuccess, OutcomeCallbackFirst, OutcomeReplyLost:
		return "success", 1
	case OutcomeDuplicateCallback:
		return "success", 2
	case OutcomeUserBlock:
		// No space after the colon here, one in "failed: system failed":
		// that inconsistency is WeChat's, and receivers must cope with it.
		return "failed:user block", 1
	case OutcomeSystemFailed:
		return "failed: system failed", 1
	}
	return "", 0
}

// Rule chooses the Outcome of the sends it matches.
type Rule struct {
	// OpenID is the exact openid to match; "" or "*" matches all, and a
	// trailing "*" is a prefix match ("block_*").
	OpenID  string
	Outcome Outcome
	// Times > 0 limits the rule to its first Times applications; zero = no limit.
	Times int
	// Rate in (0,1) applies the rule with that probability; zero (or 1) = always.
	Rate float64
}

func (r Rule) matches(openID string) bool {
	switch {
	case r.OpenID == "" || r.OpenID == "*":
		return true
	case strings.HasSuffix(r.OpenID, "*"):
		return strings.HasPrefix(openID, strings.TrimSuffix(r.OpenID, "*"))
	default:
		return r.OpenID == openID
	}
}

func (r Rule) validate() error {
	switch {
	case !r.Outcome.valid():
		return fmt.Errorf("unknown outcome %q (want one of %s)", r.Outcome, outcomeNames())
	case r.Times < 0:
		return fmt.Errorf("Times %d is negative", r.Times)
	case r.Rate < 0 || r.Rate > 1:
		return fmt.Errorf("Rate %v is outside [0,1]", r.Rate)
	}
	return nil
}

func validateRules(rules []Rule) error {
	for i, r := range rules {
		if err := r.validate(); err != nil {
			return fmt.Errorf("Rules[%d]: %w", i, err)
		}
	}
	return nil
}

func outcomeNames() string {
	names := make([]string, len(outcomes))
	for i, o := range outcomes {
		names[i] = string(o)
	}
	return strings.Join(names, ", ")
}

// ruleState is a Rule with the count that Times limits.
type ruleState struct {
	Rule
	used int
}

func newRuleStates(rules []Rule) []ruleState {
	states := make([]ruleState, len(rules))
	for i, r := range rules {
		states[i] = ruleState{Rule: r}
	}
	return states
}

// decide returns the Outcome of a valid send to openID. The caller holds the
// server's lock, because applying a rule uses up one of its Times.
func decide(rules []ruleState, openID string) Outcome {
	for i := range rules {
		r := &rules[i]
		if !r.matches(openID) {
			continue
		}
		if r.Times > 0 && r.used >= r.Times {
			continue
		}
		if r.Rate > 0 && r.Rate < 1 && rand.Float64() >= r.Rate {
			continue
		}
		r.used++
		return r.Outcome
	}
	return OutcomeSuccess
}

// ParseRules reads a comma-separated rule list such as
// "block_*=user_block, busy_1=system_busy:3, flaky=http_500@0.1, *=success":
// each item is openid=outcome with an optional ":N" (Times) and "@R" (Rate).
// An empty spec is no rules. Errors name the bad item.
func ParseRules(spec string) ([]Rule, error) {
	var rules []Rule
	for i, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		r, err := parseRule(item)
		if err != nil {
			return nil, fmt.Errorf("wechatsim: rule %d %q: %w", i+1, item, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func parseRule(item string) (Rule, error) {
	openID, rest, ok := strings.Cut(item, "=")
	if !ok {
		return Rule{}, fmt.Errorf(`missing "=" between openid and outcome`)
	}
	r := Rule{OpenID: strings.TrimSpace(openID)}
	rest = strings.TrimSpace(rest)
	end := strings.IndexAny(rest, ":@")
	if end < 0 {
		end = len(rest)
	}
	r.Outcome = Outcome(strings.TrimSpace(rest[:end]))
	for rest = rest[end:]; rest != ""; {
		mark := rest[0]
		rest = rest[1:]
		end := strings.IndexAny(rest, ":@")
		if end < 0 {
			end = len(rest)
		}
		value := strings.TrimSpace(rest[:end])
		rest = rest[end:]
		switch mark {
		case ':':
			n, err := strconv.Atoi(value)
			if err != nil || n <= 0 {
				return Rule{}, fmt.Errorf("times %q is not a positive integer", value)
			}
			r.Times = n
		case '@':
			f, err := strconv.ParseFloat(value, 64)
			if err != nil || f <= 0 || f > 1 {
				return Rule{}, fmt.Errorf("rate %q is not a number in (0,1]", value)
			}
			r.Rate = f
		}
	}
	if err := r.validate(); err != nil {
		return Rule{}, err
	}
	return r, nil
}
