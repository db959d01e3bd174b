//go:build !race

package usl

const raceEnabled = false
