package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/auth"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

// cheapPasswords keeps hashing fast in tests; the code path is the same.
func cheapPasswords(_ *env, d *Deps) {
	d.PasswordParams = &auth.Params{Time: 1, Memory: 1024, Threads: 1, KeyLen: 32, SaltLen: 16}
}

func withPublicURL(u string) envOpt { return func(_ *env, d *Deps) { d.PublicURL = u } }

// session is a logged-in browser: its cookies and CSRF token.
type session struct {
	e       *env
	cookies map[string]string
	csrf    string
	userID  string
	teamID  string
}

func (s *session) cookieHeader() string {
	var parts []string
	for _, k := range sortedKeysS(s.cookies) {
		parts = append(parts, k+"="+s.cookies[k])
	}
	return strings.Join(parts, "; ")
}

func sortedKeysS(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// do sends a request with the session's cookies and, unless hdrs set it,
// its CSRF header; Set-Cookie answers update the cookies.
func (s *session) do(method, path string, body any, hdrs ...string) resp {
	s.e.t.Helper()
	h := []string{"Cookie", s.cookieHeader()}
	if !slices.Contains(hdrs, auth.CSRFHeader) {
		h = append(h, auth.CSRFHeader, s.csrf)
	}
	r := s.e.do(method, path, "", body, append(h, hdrs...)...)
	for _, c := range (&http.Response{Header: r.hdr}).Cookies() {
		if c.MaxAge < 0 {
			delete(s.cookies, c.Name)
		} else {
			s.cookies[c.Name] = c.Value
		}
	}
	return r
}

func (e *env) signup(email, password string) resp {
	e.t.Helper()
	return e.do("POST", "/v1/auth/signup", "", map[string]any{"email": email, "password": password, "name": "N"})
}

// user signs a user up and logs it in.
func (e *env) user(email string) *session {
	e.t.Helper()
	if r := e.signup(email, "password-"+email); r.status != http.StatusCreated {
		e.t.Fatalf("signup %s: %d %s", email, r.status, r.body)
	}
	s, r := e.login(email, "password-"+email)
	if s == nil {
		e.t.Fatalf("login %s: %d %s", email, r.status, r.body)
	}
	return s
}

func (e *env) login(email, password string) (*session, resp) {
	e.t.Helper()
	r := e.do("POST", "/v1/auth/login", "", map[string]any{"email": email, "password": password})
	if r.status != http.StatusOK {
		return nil, r
	}
	var body struct {
		User   User   `json:"user"`
		TeamID string `json:"team_id"`
		CSRF   string `json:"csrf_token"`
	}
	r.decode(e.t, &body)
	s := &session{e: e, cookies: map[string]string{}, csrf: body.CSRF, userID: body.User.ID, teamID: body.TeamID}
	for _, c := range (&http.Response{Header: r.hdr}).Cookies() {
		s.cookies[c.Name] = c.Value
	}
	return s, r
}

// key gives s's user an API key in the session's current team.
func (s *session) key() (keyID, key string) {
	s.e.t.Helper()
	r := s.do("POST", "/v1/api-keys", map[string]any{"name": "k"})
	if r.status != http.StatusCreated {
		s.e.t.Fatalf("create key: %d %s", r.status, r.body)
	}
	var k APIKey
	r.decode(s.e.t, &k)
	return k.ID, k.Key
}

func TestSignupLoginLogout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	r := e.signup(" Alice@Example.com ", "correct horse battery")
	if r.status != http.StatusCreated {
		t.Fatalf("signup: %d %s", r.status, r.body)
	}
	var su struct {
		User User `json:"user"`
		Team Team `json:"team"`
	}
	r.decode(t, &su)
	if su.User.Email != "alice@example.com" || su.Team.Role != "owner" || !id.Valid(id.Team, su.Team.ID) {
		t.Fatalf("signup answer %s", r.body)
	}
	var stored string
	must(t, e.pool.QueryRow(context.Background(), "SELECT password_hash FROM users WHERE id = $1", su.User.ID).Scan(&stored))
	if !strings.HasPrefix(stored, "$argon2id$") || strings.Contains(stored, "correct horse") {
		t.Fatalf("stored password %q", stored)
	}
	if r := e.signup("ALICE@example.com", "another password"); r.status != http.StatusConflict {
		t.Fatalf("duplicate signup: %d %s", r.status, r.body)
	}
	for _, c := range []struct{ email, pw, field string }{
		{"not-an-email", "long enough password", "email"},
		{"bob@example.com", "short", "password"},
		{"", "long enough password", "email"},
	} {
		r := e.signup(c.email, c.pw)
		code, msg := r.errCode(t)
		if r.status != http.StatusBadRequest || code != CodeInvalidArgument || !strings.HasPrefix(msg, c.field+":") {
			t.Errorf("signup(%q, %q): %d %s", c.email, c.pw, r.status, r.body)
		}
	}

	s, r := e.login("alice@example.com", "correct horse battery")
	if s == nil {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	cookies := map[string]*http.Cookie{}
	for _, c := range (&http.Response{Header: r.hdr}).Cookies() {
		cookies[c.Name] = c
	}
	sc, cc := cookies[auth.SessionCookie], cookies[auth.CSRFCookie]
	if sc == nil || cc == nil {
		t.Fatalf("cookies %v", r.hdr["Set-Cookie"])
	}
	if !sc.HttpOnly || cc.HttpOnly || sc.SameSite != http.SameSiteLaxMode || cc.SameSite != http.SameSiteLaxMode || sc.Secure || sc.Path != "/" {
		t.Fatalf("cookie attributes %v", r.hdr["Set-Cookie"])
	}
	if cc.Value != s.csrf || s.teamID != su.Team.ID {
		t.Fatalf("csrf cookie %q body %q, team %q", cc.Value, s.csrf, s.teamID)
	}
	var n int
	must(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sessions WHERE token_hash = $1", sc.Value).Scan(&n))
	if n != 0 {
		t.Fatal("the session token is stored in the clear")
	}

	r = s.do("GET", "/v1/me", nil)
	var me struct {
		User   User   `json:"user"`
		TeamID string `json:"team_id"`
		Role   string `json:"role"`
		Auth   string `json:"auth"`
	}
	r.decode(t, &me)
	if r.status != 200 || me.User.ID != su.User.ID || me.TeamID != su.Team.ID || me.Role != "owner" || me.Auth != "session" {
		t.Fatalf("me: %d %s", r.status, r.body)
	}
	// Existing routes work with a session too.
	if r := s.do("GET", "/v1/sandboxes", nil); r.status != 200 {
		t.Fatalf("list sandboxes with a session: %d %s", r.status, r.body)
	}

	// Logout ends this session only.
	other, _ := e.login("alice@example.com", "correct horse battery")
	if r := s.do("POST", "/v1/auth/logout", nil); r.status != http.StatusNoContent {
		t.Fatalf("logout: %d %s", r.status, r.body)
	}
	if _, ok := s.cookies[auth.SessionCookie]; ok {
		t.Fatal("logout did not clear the session cookie")
	}
	s.cookies[auth.SessionCookie] = sc.Value // a client that kept the cookie
	if r := s.do("GET", "/v1/me", nil); r.status != http.StatusUnauthorized {
		t.Fatalf("me after logout: %d", r.status)
	}
	if r := other.do("GET", "/v1/me", nil); r.status != 200 {
		t.Fatalf("other session after logout: %d", r.status)
	}

	// Logout everywhere ends every session of the user, keys keep working.
	_, key := other.key()
	third, _ := e.login("alice@example.com", "correct horse battery")
	r = other.do("POST", "/v1/auth/logout-all", nil)
	var ended struct {
		N int `json:"sessions_ended"`
	}
	r.decode(t, &ended)
	if r.status != 200 || ended.N != 2 {
		t.Fatalf("logout-all: %d %s", r.status, r.body)
	}
	for _, ss := range []*session{other, third} {
		if r := ss.do("GET", "/v1/me", nil); r.status != http.StatusUnauthorized {
			t.Fatalf("session after logout-all: %d", r.status)
		}
	}
	if r := e.do("GET", "/v1/me", key, nil); r.status != 200 {
		t.Fatalf("API key after logout-all: %d", r.status)
	}
	if r := e.do("POST", "/v1/auth/logout", key, nil); r.status != http.StatusBadRequest {
		t.Fatalf("logout with an API key: %d", r.status)
	}
}

func TestSecureCookiesBehindHTTPS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords, withPublicURL("https://wrenn.example"))
	e.signup("a@example.com", "0123456789")
	_, r := e.login("a@example.com", "0123456789")
	for _, c := range (&http.Response{Header: r.hdr}).Cookies() {
		if !c.Secure {
			t.Errorf("cookie %s is not Secure behind an https public URL", c.Name)
		}
	}
}

// An unknown email, a wrong password and a user without a password are
// indistinguishable.
func TestLoginFailuresLookAlike(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	e.signup("known@example.com", "the right password")
	must(t, e.q.CreateUser(context.Background(), db.CreateUserParams{ID: id.New(id.User), Email: "nopass@example.com"}))
	var first []byte
	for i, c := range []struct{ email, pw string }{
		{"known@example.com", "the wrong password"},
		{"unknown@example.com", "the right password"},
		{"nopass@example.com", "the right password"},
		{"known@example.com", strings.Repeat("x", 10000)},
	} {
		_, r := e.login(c.email, c.pw)
		if r.status != http.StatusUnauthorized {
			t.Fatalf("%s: %d %s", c.email, r.status, r.body)
		}
		if i == 0 {
			first = r.body
		} else if string(r.body) != string(first) {
			t.Fatalf("%s: body %s differs from %s", c.email, r.body, first)
		}
		if len(r.hdr["Set-Cookie"]) != 0 {
			t.Fatalf("%s: failed login set cookies", c.email)
		}
	}
}

func TestSessionExpirySlides(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	s := e.user("a@example.com")
	// Each use within 14 days slides the expiry forward.
	for range 3 {
		e.clock.Add(13 * 24 * time.Hour)
		if r := s.do("GET", "/v1/me", nil); r.status != 200 {
			t.Fatalf("session used within its lifetime: %d %s", r.status, r.body)
		}
	}
	e.clock.Add(14*24*time.Hour + time.Second)
	r := s.do("GET", "/v1/me", nil)
	if code, _ := r.errCode(t); r.status != http.StatusUnauthorized || code != CodeUnauthorized {
		t.Fatalf("expired session: %d %s", r.status, r.body)
	}
	var n int
	must(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sessions").Scan(&n))
	if n != 0 {
		t.Fatalf("%d sessions left after expiry", n)
	}
}

func TestCSRF(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	s := e.user("a@example.com")
	body := map[string]any{"name": "t"}
	for _, c := range []struct {
		name string
		hdrs []string
		want int
	}{
		{"missing header", []string{auth.CSRFHeader, ""}, http.StatusForbidden},
		{"wrong header", []string{auth.CSRFHeader, auth.NewCSRFToken()}, http.StatusForbidden},
		{"header without cookie", []string{"Cookie", auth.SessionCookie + "=" + s.cookies[auth.SessionCookie]}, http.StatusForbidden},
		{"planted cookie pair", func() []string {
			planted := auth.NewCSRFToken()
			return []string{"Cookie", auth.SessionCookie + "=" + s.cookies[auth.SessionCookie] + "; " + auth.CSRFCookie + "=" + planted, auth.CSRFHeader, planted}
		}(), http.StatusForbidden},
		{"right header", nil, http.StatusCreated},
	} {
		r := s.do("POST", "/v1/teams", body, c.hdrs...)
		if r.status != c.want {
			t.Errorf("%s: %d %s", c.name, r.status, r.body)
		}
		if c.want == http.StatusForbidden {
			if _, msg := r.errCode(t); !strings.Contains(msg, auth.CSRFHeader) {
				t.Errorf("%s: message %q does not say what is missing", c.name, msg)
			}
		}
	}
	// GET needs no token, API keys need none.
	if r := s.do("GET", "/v1/teams", nil, auth.CSRFHeader, ""); r.status != 200 {
		t.Fatalf("GET without CSRF: %d", r.status)
	}
	_, key := s.key()
	if r := e.do("POST", "/v1/teams", key, body); r.status != http.StatusCreated {
		t.Fatalf("API key POST without CSRF: %d %s", r.status, r.body)
	}
	// Logout needs it too, so a forged form cannot log users out.
	if r := s.do("POST", "/v1/auth/logout", nil, auth.CSRFHeader, ""); r.status != http.StatusForbidden {
		t.Fatalf("logout without CSRF: %d", r.status)
	}
}

// teamFixture is a team with an owner, an admin and a member, each with an
// API key in the team, plus outsiders to add.
type teamFixture struct {
	teamID     string
	ownerEmail string
	keys       map[string]string // role -> key
	users      map[string]string // role -> user id
}

var fixtureSeq struct {
	sync.Mutex
	n int
}

func (e *env) teamFixture() teamFixture {
	e.t.Helper()
	fixtureSeq.Lock()
	fixtureSeq.n++
	n := fixtureSeq.n
	fixtureSeq.Unlock()
	owner := e.user(fmt.Sprintf("owner%d@example.com", n))
	f := teamFixture{teamID: owner.teamID, ownerEmail: fmt.Sprintf("owner%d@example.com", n), keys: map[string]string{}, users: map[string]string{"owner": owner.userID}}
	_, f.keys["owner"] = owner.key()
	for _, role := range []string{"admin", "member"} {
		email := fmt.Sprintf("%s%d@example.com", role, n)
		u := e.user(email)
		if r := e.do("POST", "/v1/teams/"+f.teamID+"/members", f.keys["owner"], map[string]any{"email": email, "role": role}); r.status != http.StatusCreated {
			e.t.Fatalf("add %s: %d %s", role, r.status, r.body)
		}
		if r := u.do("POST", "/v1/teams/"+f.teamID+"/switch", nil); r.status != 200 {
			e.t.Fatalf("switch: %d %s", r.status, r.body)
		}
		f.users[role] = u.userID
		_, f.keys[role] = u.key()
	}
	return f
}

func TestRoleRules(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	cases := []struct {
		actor, target, newRole string // newRole "": remove; target "self": the actor
		want                   int
	}{
		{"member", "member2", "admin", http.StatusForbidden},
		{"member", "member2", "", http.StatusForbidden},
		{"member", "self", "admin", http.StatusForbidden},
		{"member", "self", "", http.StatusNoContent}, // anyone may leave
		{"admin", "member2", "admin", http.StatusOK},
		{"admin", "member2", "owner", http.StatusForbidden},
		{"admin", "member2", "", http.StatusNoContent},
		{"admin", "owner", "member", http.StatusForbidden},
		{"admin", "owner", "", http.StatusForbidden},
		{"admin", "self", "member", http.StatusOK},
		{"owner", "member2", "owner", http.StatusOK},
		{"owner", "admin", "member", http.StatusOK},
		{"owner", "admin", "", http.StatusNoContent},
		{"owner", "self", "admin", http.StatusConflict}, // the last owner
		{"owner", "self", "", http.StatusConflict},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s %s to %q", c.actor, c.target, c.newRole)
		f := e.teamFixture()
		target := f.users[c.target]
		switch c.target {
		case "self":
			target = f.users[c.actor]
		case "member2":
			extra := e.user(fmt.Sprintf("m2-%s@example.com", id.Secret(4)))
			target = extra.userID
			must(t, e.q.AddTeamMember(context.Background(), db.AddTeamMemberParams{TeamID: f.teamID, UserID: target, Role: "member"}))
		}
		path := "/v1/teams/" + f.teamID + "/members/" + target
		var r resp
		if c.newRole == "" {
			r = e.do("DELETE", path, f.keys[c.actor], nil)
		} else {
			r = e.do("PATCH", path, f.keys[c.actor], map[string]any{"role": c.newRole})
		}
		if r.status != c.want {
			t.Errorf("%s: %d %s", name, r.status, r.body)
			continue
		}
		// What was refused changed nothing; what was done is visible.
		role, err := e.q.GetMembership(context.Background(), db.GetMembershipParams{TeamID: f.teamID, UserID: target})
		switch {
		case c.want >= 400 && (err != nil || role == c.newRole && c.newRole != ""):
			t.Errorf("%s: refused, yet membership is %q %v", name, role, err)
		case c.want == http.StatusOK && role != c.newRole:
			t.Errorf("%s: role is %q", name, role)
		case c.want == http.StatusNoContent && !isNoRows(err):
			t.Errorf("%s: still a member (%q %v)", name, role, err)
		}
	}

	// Adding members.
	f := e.teamFixture()
	e.user("x1@example.com")
	e.user("x2@example.com")
	for _, c := range []struct {
		actor, email, role string
		want               int
	}{
		{"member", "x1@example.com", "member", http.StatusForbidden},
		{"admin", "x1@example.com", "owner", http.StatusForbidden},
		{"admin", "x1@example.com", "bogus", http.StatusBadRequest},
		{"admin", "nobody@example.com", "member", http.StatusNotFound},
		{"admin", "X1@Example.com", "admin", http.StatusCreated},
		{"owner", "x1@example.com", "member", http.StatusConflict},
		{"owner", "x2@example.com", "owner", http.StatusCreated},
	} {
		r := e.do("POST", "/v1/teams/"+f.teamID+"/members", f.keys[c.actor], map[string]any{"email": c.email, "role": c.role})
		if r.status != c.want {
			t.Errorf("%s adds %s as %s: %d %s", c.actor, c.email, c.role, r.status, r.body)
		}
	}
	r := e.do("GET", "/v1/teams/"+f.teamID+"/members", f.keys["member"], nil)
	var ms struct{ Members []Member }
	r.decode(t, &ms)
	if len(ms.Members) != 5 {
		t.Fatalf("members: %s", r.body)
	}
}

func TestLastOwnerProtection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	f := e.teamFixture()
	ownerPath := "/v1/teams/" + f.teamID + "/members/" + f.users["owner"]
	if r := e.do("PATCH", ownerPath, f.keys["owner"], map[string]any{"role": "member"}); r.status != http.StatusConflict {
		t.Fatalf("demote last owner: %d %s", r.status, r.body)
	}
	// With two owners, each tries to demote the other at the same time:
	// the team lock lets exactly one win.
	adminPath := "/v1/teams/" + f.teamID + "/members/" + f.users["admin"]
	if r := e.do("PATCH", adminPath, f.keys["owner"], map[string]any{"role": "owner"}); r.status != 200 {
		t.Fatalf("promote: %d %s", r.status, r.body)
	}
	var wg sync.WaitGroup
	statuses := make([]int, 2)
	for i, c := range []struct{ key, path string }{{f.keys["owner"], adminPath}, {f.keys["admin"], ownerPath}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = e.do("PATCH", c.path, c.key, map[string]any{"role": "member"}).status
		}()
	}
	wg.Wait()
	slices.Sort(statuses)
	// The loser is either refused as last owner (409) or, having just been
	// demoted, no longer allowed to change owners (403).
	if statuses[0] != 200 || (statuses[1] != http.StatusConflict && statuses[1] != http.StatusForbidden) {
		t.Fatalf("concurrent demotions: %v", statuses)
	}
	n, err := e.q.CountOwners(context.Background(), f.teamID)
	if err != nil || n != 1 {
		t.Fatalf("owners left: %d %v", n, err)
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	f := e.teamFixture()
	r := e.do("POST", "/v1/api-keys", f.keys["member"], map[string]any{"name": "ci"})
	var k APIKey
	r.decode(t, &k)
	if r.status != http.StatusCreated || !strings.HasPrefix(k.Key, "wrn_") || len(k.Key) != 36 || k.Prefix != k.Key[:8]+"…" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/v1/api-keys", f.keys["member"], map[string]any{"name": ""}); r.status != http.StatusBadRequest {
		t.Fatalf("nameless key: %d", r.status)
	}
	e.clock.Add(time.Hour)
	if r := e.do("GET", "/v1/sandboxes", k.Key, nil); r.status != 200 {
		t.Fatalf("new key: %d", r.status)
	}
	r = e.do("GET", "/v1/api-keys", f.keys["member"], nil)
	if strings.Contains(string(r.body), k.Key) || strings.Contains(string(r.body), `"key"`) {
		t.Fatalf("listing shows a key: %s", r.body)
	}
	var list struct {
		Keys []APIKey `json:"api_keys"`
	}
	r.decode(t, &list)
	var got *APIKey
	for i := range list.Keys {
		if list.Keys[i].ID == k.ID {
			got = &list.Keys[i]
		}
	}
	if got == nil || got.Name != "ci" || got.LastUsedAt == nil || !got.LastUsedAt.Equal(e.clock.Now()) || len(list.Keys) != 4 {
		t.Fatalf("listing: %s", r.body)
	}
	// A member may not revoke the owner's key; the admin may.
	var ownerKeyID string
	for _, lk := range list.Keys {
		if lk.UserID == f.users["owner"] {
			ownerKeyID = lk.ID
		}
	}
	if r := e.do("DELETE", "/v1/api-keys/"+ownerKeyID, f.keys["member"], nil); r.status != http.StatusForbidden {
		t.Fatalf("member revokes owner's key: %d", r.status)
	}
	if r := e.do("DELETE", "/v1/api-keys/"+k.ID, f.keys["member"], nil); r.status != http.StatusNoContent {
		t.Fatalf("revoke own key: %d %s", r.status, r.body)
	}
	r = e.do("GET", "/v1/sandboxes", k.Key, nil)
	if code, _ := r.errCode(t); r.status != http.StatusUnauthorized || code != CodeUnauthorized {
		t.Fatalf("revoked key: %d %s", r.status, r.body)
	}
	if r := e.do("DELETE", "/v1/api-keys/"+ownerKeyID, f.keys["admin"], nil); r.status != http.StatusNoContent {
		t.Fatalf("admin revokes owner's key: %d", r.status)
	}
	if r := e.do("GET", "/v1/me", f.keys["owner"], nil); r.status != http.StatusUnauthorized {
		t.Fatalf("owner's revoked key: %d", r.status)
	}
	if r := e.do("DELETE", "/v1/api-keys/key-nonsense", f.keys["admin"], nil); r.status != http.StatusNotFound {
		t.Fatalf("revoke unknown: %d", r.status)
	}
}

func TestAdminRoutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	_, adminKey := e.team(true)
	s := e.user("plain@example.com")
	for _, path := range []string{"/v1/admin/users", "/v1/admin/teams"} {
		r := s.do("GET", path, nil)
		code, msg := r.errCode(t)
		if r.status != http.StatusForbidden || code != CodeForbidden || !strings.Contains(msg, "administrators") {
			t.Errorf("%s as non-admin: %d %s", path, r.status, r.body)
		}
		if r := e.do("GET", path, adminKey, nil); r.status != 200 || !strings.Contains(string(r.body), "created_at") {
			t.Errorf("%s as admin: %d %s", path, r.status, r.body)
		}
	}
	r := e.do("GET", "/v1/admin/users", adminKey, nil)
	var us struct{ Users []User }
	r.decode(t, &us)
	if len(us.Users) != 2 {
		t.Fatalf("users: %s", r.body)
	}
}

// Team B's key and session see none of team A's sandboxes, members, keys
// or audit entries: every such request is 404, never 403.
func TestIdentityTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	e.host("h1")
	a := e.user("a@example.com")
	aKeyID, aKey := a.key()
	r := e.do("POST", "/v1/sandboxes", aKey, map[string]any{"template": "minimal"})
	var sb Sandbox
	r.decode(t, &sb)
	e.waitStatus(aKey, sb.ID, "running")
	b := e.user("b@example.com")
	_, bKey := b.key()

	type req struct{ method, path string }
	reqs := []req{
		{"GET", "/v1/sandboxes/" + sb.ID},
		{"DELETE", "/v1/sandboxes/" + sb.ID},
		{"POST", "/v1/sandboxes/" + sb.ID + "/pause"},
		{"POST", "/v1/sandboxes/" + sb.ID + "/exec"},
		{"GET", "/v1/teams/" + a.teamID + "/members"},
		{"POST", "/v1/teams/" + a.teamID + "/members"},
		{"PATCH", "/v1/teams/" + a.teamID + "/members/" + a.userID},
		{"DELETE", "/v1/teams/" + a.teamID + "/members/" + a.userID},
		{"POST", "/v1/teams/" + a.teamID + "/switch"},
		{"DELETE", "/v1/api-keys/" + aKeyID},
	}
	bodies := map[string]any{
		"POST /v1/sandboxes/" + sb.ID + "/exec":                map[string]any{"cmd": "true"},
		"POST /v1/teams/" + a.teamID + "/members":              map[string]any{"email": "b@example.com", "role": "owner"},
		"PATCH /v1/teams/" + a.teamID + "/members/" + a.userID: map[string]any{"role": "member"},
	}
	for _, q := range reqs {
		body := bodies[q.method+" "+q.path]
		for via, do := range map[string]func() resp{
			"key":     func() resp { return e.do(q.method, q.path, bKey, body) },
			"session": func() resp { return b.do(q.method, q.path, body) },
		} {
			r := do()
			if r.status != http.StatusNotFound && !(q.path == "/v1/teams/"+a.teamID+"/switch" && via == "key" && r.status == http.StatusBadRequest) {
				t.Errorf("%s %s with B's %s: %d %s", q.method, q.path, via, r.status, r.body)
			}
		}
	}
	// Nothing of A's changed.
	if got := e.waitStatus(aKey, sb.ID, "running"); got.Status != "running" {
		t.Fatal(got.Status)
	}
	if r := e.do("GET", "/v1/me", aKey, nil); r.status != 200 {
		t.Fatalf("A's key after B's attempts: %d", r.status)
	}
	e.api.auditWG.Wait()
	for _, s := range []*session{b} {
		r := s.do("GET", "/v1/audit?limit=500", nil)
		var page struct{ Entries []AuditEntry }
		r.decode(t, &page)
		for _, en := range page.Entries {
			if en.TeamID != b.teamID || en.ResourceID == sb.ID && en.Outcome == "success" {
				t.Errorf("B's audit shows %+v", en)
			}
		}
	}
	r = e.do("GET", "/v1/api-keys", bKey, nil)
	if strings.Contains(string(r.body), aKeyID) {
		t.Fatalf("B lists A's key: %s", r.body)
	}
}

func TestAuditLog(t *testing.T) {
	t.Parallel()
	e := newEnv(t, cheapPasswords)
	e.host("h1")
	f := e.teamFixture()
	s, _ := e.login(f.ownerEmail, "password-"+f.ownerEmail)
	key := f.keys["owner"]
	r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"})
	var sb Sandbox
	r.decode(t, &sb)
	e.waitStatus(key, sb.ID, "running")
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true"})
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/pause", key, nil)
	e.waitStatus(key, sb.ID, "paused")
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/resume", key, nil)
	e.waitStatus(key, sb.ID, "running")
	if r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/resume", key, nil); r.status != http.StatusAccepted {
		t.Fatalf("resume of running: %d", r.status)
	}
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{}) // a failure: no cmd
	e.do("DELETE", "/v1/sandboxes/"+sb.ID, key, nil)
	kid, _ := s.key()
	s.do("DELETE", "/v1/api-keys/"+kid, nil)
	memberPath := "/v1/teams/" + f.teamID + "/members/" + f.users["member"]
	s.do("PATCH", memberPath, map[string]any{"role": "admin"})
	s.do("PATCH", "/v1/teams/"+f.teamID+"/members/"+f.users["owner"], map[string]any{"role": "member"}) // 409
	s.do("DELETE", memberPath, nil)
	s.do("POST", "/v1/teams/"+f.teamID+"/members", map[string]any{"email": "nobody@example.com"})
	s.do("POST", "/v1/auth/logout", nil)
	e.api.auditWG.Wait()

	var all []AuditEntry
	before := ""
	for {
		r := e.do("GET", "/v1/audit?limit=3"+before, key, nil)
		if r.status != 200 {
			t.Fatalf("audit: %d %s", r.status, r.body)
		}
		var page struct {
			Entries    []AuditEntry
			NextBefore int64 `json:"next_before"`
		}
		r.decode(t, &page)
		all = append(all, page.Entries...)
		if page.NextBefore == 0 {
			break
		}
		before = fmt.Sprintf("&before=%d", page.NextBefore)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID {
			t.Fatalf("not newest first: %d after %d", all[i].ID, all[i-1].ID)
		}
	}
	type seen struct{ action, resource, outcome string }
	got := map[seen]AuditEntry{}
	for _, en := range all {
		if en.TeamID != f.teamID || en.RequestID == "" || !strings.HasPrefix(en.ActorUserID, id.User) {
			t.Errorf("entry %+v", en)
		}
		got[seen{en.Action, en.ResourceID, en.Outcome}] = en
	}
	for _, w := range []seen{
		{"sandbox.create", sb.ID, "success"},
		{"sandbox.exec", sb.ID, "success"},
		{"sandbox.pause", sb.ID, "success"},
		{"sandbox.resume", sb.ID, "success"},
		{"sandbox.exec", sb.ID, "failure"},
		{"sandbox.destroy", sb.ID, "success"},
		{"api_key.create", kid, "success"},
		{"api_key.revoke", kid, "success"},
		{"member.add", f.users["admin"], "success"},
		{"member.update", f.users["member"], "success"},
		{"member.update", f.users["owner"], "failure"},
		{"member.remove", f.users["member"], "success"},
		{"member.add", "", "failure"},
	} {
		en, ok := got[w]
		if !ok {
			t.Errorf("no audit entry %+v", w)
			continue
		}
		wantKey := strings.HasPrefix(w.action, "sandbox.") || w.action == "member.add" && w.outcome == "success"
		if (en.ActorKeyID != "") != wantKey {
			t.Errorf("%+v: actor key %q", w, en.ActorKeyID)
		}
	}
	// The logout ended the session whose login is the newest one.
	var logins, logouts []string
	for _, en := range all {
		switch en.Action {
		case "session.login":
			logins = append(logins, en.ResourceID)
		case "session.logout":
			logouts = append(logouts, en.ResourceID)
		}
	}
	if len(logins) != 2 || len(logouts) != 1 || logouts[0] != logins[0] || !strings.HasPrefix(logins[0], "ses-") {
		t.Errorf("logins %v logouts %v", logins, logouts)
	}
	if r := e.do("GET", "/v1/audit?limit=0", key, nil); r.status != http.StatusBadRequest {
		t.Fatalf("limit=0: %d", r.status)
	}
	// A failed login is recorded against the user (it acts for no team).
	e.login(f.ownerEmail, "wrong password!")
	e.api.auditWG.Wait()
	var n int
	must(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_log WHERE action = 'session.login' AND outcome = 'denied' AND actor_user_id = $1", f.users["owner"]).Scan(&n))
	if n != 1 {
		t.Fatalf("denied logins recorded: %d", n)
	}
}

func TestPrincipalActor(t *testing.T) {
	t.Parallel()
	for p, want := range map[Principal]string{
		{KeyID: "key-a", TeamID: "team-t"}:     "api:key-a",
		{SessionID: "ses-b", TeamID: "team-t"}: "session:ses-b",
	} {
		if got := p.Actor(); got != want {
			t.Errorf("%+v: %q, want %q", p, got, want)
		}
	}
}
