// Package devkeys keeps the development credentials a local server creates
// when nothing is configured, so that `knowledgehub token`, `publish` and
// `listen` on the same machine work without flags.
package devkeys

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileName is the file in data_dir that holds the development credentials.
const FileName = "dev-credentials.json"

// Keys are the development credentials of a local server.
type Keys struct {
	JWTSecret  string `json:"jwt_secret"`
	PublishKey string `json:"publish_key"`
	AdminKey   string `json:"admin_key"`
	URL        string `json:"url,omitempty"` // where the server last listened
}

// Path returns the credentials file of dataDir.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// Load reads the credentials of dataDir.
func Load(dataDir string) (Keys, error) {
	var k Keys
	b, err := os.ReadFile(Path(dataDir))
	if err != nil {
		return k, fmt.Errorf("development credentials: %w", err)
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return k, fmt.Errorf("development credentials %s: %w", Path(dataDir), err)
	}
	return k, nil
}

// LoadOrCreate returns the credentials of dataDir, creating random ones on
// first use; created reports whether they were new.
func LoadOrCreate(dataDir string) (k Keys, created bool, err error) {
	k, err = Load(dataDir)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return k, false, err
	}
	k = Keys{JWTSecret: random(32), PublishKey: "pk_" + random(24), AdminKey: "ak_" + random(24)}
	return k, true, Save(dataDir, k)
}

// Save writes the credentials, readable by the owner only.
func Save(dataDir string, k Keys) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("development credentials: %w", err)
	}
	b, _ := json.MarshalIndent(k, "", "  ")
	tmp := Path(dataDir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("development credentials: %w", err)
	}
	if err := os.Rename(tmp, Path(dataDir)); err != nil {
		return fmt.Errorf("development credentials: %w", err)
	}
	return nil
}

func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
