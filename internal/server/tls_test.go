package server_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "knowledgehub test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	keyDER, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	n := servertest.Start(t, "--tls-cert-file", certFile, "--tls-key-file", keyFile)
	tlsCfg := &tls.Config{RootCAs: pool}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
	base := "https://" + n.Addr

	// Plain HTTP is not served on a TLS address.
	if resp, err := http.Get("http://" + n.Addr + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP answered 200 on the TLS address")
	}

	d := websocket.Dialer{TLSClientConfig: tlsCfg, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("wss://"+n.Addr+"/ws/notifications?token="+servertest.Token(t, "alice", time.Hour), nil)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	var welcome map[string]any
	if err := ws.ReadJSON(&welcome); err != nil || welcome["type"] != "connected" || welcome["user_id"] != "alice" {
		t.Fatalf("wss welcome %v %v", welcome, err)
	}
	if err := ws.WriteJSON(map[string]string{"type": "ping"}); err != nil {
		t.Fatal(err)
	}
	var pong map[string]any
	if err := ws.ReadJSON(&pong); err != nil || pong["type"] != "pong" {
		t.Fatalf("wss pong %v %v", pong, err)
	}

	resp, err := client.Get(base + "/api/realtime/stream")
	if err != nil {
		t.Fatalf("https stream: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("https stream: %d %v", resp.StatusCode, resp.Header)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	req, _ := http.NewRequest(http.MethodPost, base+"/api/realtime/events", strings.NewReader(`{"type":"CODE_CHANGE","data":"over tls"}`))
	req.Header.Set("Authorization", "Bearer "+servertest.PublishKey)
	req.Header.Set("Content-Type", "application/json")
	// The stream must be attached before the publish for it to be live.
	waitLine(t, lines, "event: connected")
	presp, err := client.Do(req)
	if err != nil || presp.StatusCode != 201 {
		t.Fatalf("https publish: %v %v", presp, err)
	}
	var pub map[string]string
	_ = json.NewDecoder(presp.Body).Decode(&pub)
	presp.Body.Close()

	waitLine(t, lines, "id: "+pub["id"])
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ev map[string]any
	if err := ws.ReadJSON(&ev); err != nil || ev["id"] != pub["id"] {
		t.Fatalf("wss event %v %v, want id %s", ev, err, pub["id"])
	}

	// Shutdown closes the WSS connection with 1001.
	go func() { _ = n.Stop() }()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if !websocket.IsCloseError(err, 1001) {
				t.Fatalf("wss end: %v, want close 1001", err)
			}
			break
		}
	}
}

func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended before %q", want)
			}
			if l == want {
				return
			}
		case <-deadline:
			t.Fatalf("no line %q in time", want)
		}
	}
}
