//go:build !race

package snapstore

const raceEnabled = false
