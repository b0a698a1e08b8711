package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// newTLSServer returns Go's own HTTP server for HTTPS and WSS. It speaks
// HTTP/1.1 only: WebSocket and the taken-over SSE stream need a connection
// of their own, which HTTP/2 does not give.
func (s *Server) newTLSServer(cert tls.Certificate) *http.Server {
	return &http.Server{
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"},
		},
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
}

// startTLS listens on addr with TLS and serves until Shutdown; done gets
// the server's end.
func (s *Server) startTLS(done chan<- error) error {
	ln, err := s.listen("tcp", s.cfg.Addr)
	if err != nil {
		return err
	}
	tlsLn := tls.NewListener(ln, s.tlsServer.TLSConfig)
	go func() {
		err := s.tlsServer.Serve(tlsLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("tls server: %w", err)
		}
		done <- err
	}()
	return nil
}
