package bridge

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The worker caches the bytecode of its imports even where this process was
// told not to; a setting of the worker's own (Env) still holds.
func TestWorkerEnvTurnsBytecodeCachingBackOn(t *testing.T) {
	t.Setenv("PYTHONDONTWRITEBYTECODE", "1")
	t.Setenv("ATELIER_TEST_KEPT", "yes")
	env := Config{}.workerEnv("/opt/atelier/python")
	assert.False(t, slices.ContainsFunc(env, func(kv string) bool { return kv == "PYTHONDONTWRITEBYTECODE=1" }), env)
	assert.Contains(t, env, "ATELIER_TEST_KEPT=yes", "the rest of the environment is passed on")
	assert.Contains(t, env, "PYTHONPATH=/opt/atelier/python")

	env = Config{Env: []string{"PYTHONDONTWRITEBYTECODE=1"}}.workerEnv("")
	assert.Contains(t, env, "PYTHONDONTWRITEBYTECODE=1")
}
