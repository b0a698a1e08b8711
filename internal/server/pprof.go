package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPprof serves Go's profiles on their own listener (pprof_addr), apart
// from the public address, until ctx is done.
func (s *Server) startPprof(ctx context.Context) (stop func(), err error) {
	ln, err := net.Listen("tcp", s.cfg.PprofAddr)
	if err != nil {
		return nil, fmt.Errorf("setting pprof_addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Warn("pprof server stopped", "err", err)
		}
	}()
	s.logger.Info("profiles served", "addr", ln.Addr().String())
	return func() {
		shutCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_ = srv.Shutdown(shutCtx)
		<-done
	}, nil
}
