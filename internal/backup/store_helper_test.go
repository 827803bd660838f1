package backup

import (
	"testing"

	"github.com/autosnap/autosnap/internal/repo"
)

// newTestStore is the repository the engine tests use: a real one in a temp dir.
func newTestStore(t *testing.T, dir string) Store {
	t.Helper()
	r, err := repo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return RepoStore{r}
}
