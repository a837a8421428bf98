package kubeapi

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/csv"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writeAuth writes the apiserver's --token-auth-file, with a token for the admin and one per
// user, and the RSA key it signs and verifies ServiceAccount tokens with.
func (s *Server) writeAuth(users []User) error {
	all := append([]User{{Name: AdminUser, Groups: []string{"system:masters"}}}, users...)
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	for _, u := range all {
		if u.Name == "" || strings.ContainsAny(u.Name, "\n\"") {
			return fmt.Errorf("add user %q: invalid name", u.Name)
		}
		if _, dup := s.tokens[u.Name]; dup {
			return fmt.Errorf("add user %q: given twice (or named like the admin)", u.Name)
		}
		token := rand.Text()
		s.tokens[u.Name] = token
		// token,user,uid,"group1,group2" (k8s.io/apiserver/pkg/authentication/token/tokenfile)
		_ = w.Write([]string{token, u.Name, u.Name, strings.Join(u.Groups, ",")})
	}
	w.Flush()
	if err := os.WriteFile(filepath.Join(s.dir, "tokens.csv"), buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	s.AdminToken = s.tokens[AdminUser]

	// Any RSA key will do; 2048 bits keeps generation well under a second.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate service account key: %w", err)
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(filepath.Join(s.dir, "sa.key"), pemKey, 0o600); err != nil {
		return fmt.Errorf("write service account key: %w", err)
	}
	return nil
}

// Kubeconfig returns a kubeconfig file that reaches the server as user ([AdminUser] or one of
// [Options.Users]) with its bearer token, or nil for an unknown user.
func (s *Server) Kubeconfig(user string) []byte {
	token, ok := s.tokens[user]
	if !ok {
		return nil
	}
	q := strconv.Quote
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: kubeapi
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: kubeapi
  context:
    cluster: kubeapi
    user: %s
current-context: kubeapi
`, q(s.Host), base64.StdEncoding.EncodeToString(s.CA), q(user), q(token), q(user))
}
