package paths

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/adrg/xdg"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDefaultPathsHonoursAtelierHome(t *testing.T) {
	root := t.TempDir()
	t.Setenv(HomeEnv, root)

	p := DefaultPaths()
	assert.Equal(t, filepath.Join(root, "data"), p.Data)
	assert.Equal(t, filepath.Join(root, "cache"), p.Cache)
	assert.Equal(t, filepath.Join(root, "config"), p.Config)
	assert.Equal(t, filepath.Join(root, "data", "atelier.db"), p.DB)
	assert.Equal(t, filepath.Join(root, "data", "images"), p.Images)
	assert.Equal(t, filepath.Join(root, "data", "models"), p.Models)
}

func TestDefaultPathsFollowXDG(t *testing.T) {
	base := t.TempDir()
	t.Setenv(HomeEnv, "")
	t.Setenv("XDG_DATA_HOME", filepath.Join(base, "share"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(base, "cache"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(base, "config"))
	xdg.Reload()
	t.Cleanup(xdg.Reload) // t.Setenv restores the variables before cleanups run

	p := DefaultPaths()
	assert.Equal(t, filepath.Join(base, "share", "atelier"), p.Data)
	assert.Equal(t, filepath.Join(base, "cache", "atelier"), p.Cache)
	assert.Equal(t, filepath.Join(base, "config", "atelier"), p.Config)
	assert.Equal(t, filepath.Join(base, "share", "atelier", "atelier.db"), p.DB)
}

func TestPathsUnderMakesRelativeRootsAbsolute(t *testing.T) {
	t.Chdir(t.TempDir())
	p := PathsUnder("home")
	assert.True(t, filepath.IsAbs(p.Data), p.Data)
	assert.True(t, filepath.IsAbs(p.Images), p.Images)
}

func TestEnsureDirs(t *testing.T) {
	p := PathsUnder(t.TempDir())
	require.NoError(t, p.EnsureDirs())
	for _, dir := range []string{p.Data, p.Cache, p.Config, p.Images, p.Models} {
		fi, err := os.Stat(dir)
		require.NoError(t, err)
		assert.True(t, fi.IsDir(), dir)
	}
	require.NoError(t, p.EnsureDirs(), "a second call must be a no-op")
}

func TestEnsureDirsReportsTheFolder(t *testing.T) {
	root := t.TempDir()
	blocker := filepath.Join(root, "data")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644)) // a file where a folder must go
	err := PathsUnder(root).EnsureDirs()
	require.Error(t, err)
	assert.Contains(t, err.Error(), blocker)
	assert.Contains(t, err.Error(), HomeEnv)
}
