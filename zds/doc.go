// Package zds speaks Istio's ZDS protocol.
package zds
