package jobs

// SetImagesFolder makes the jobs that start from now on write their images
// below dir, one folder per day; "" goes back to the data folder's images. A
// job that has started keeps its folder.
func (r *Runner) SetImagesFolder(dir string) { r.imagesDir.Store(&dir) }

// ImagesFolder is where the next job's images go (below it, by day).
func (r *Runner) ImagesFolder() string {
	if p := r.imagesDir.Load(); p != nil && *p != "" {
		return *p
	}
	return r.paths.Images
}
