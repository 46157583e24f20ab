"""Webhook subscriptions (Standard Webhooks) that feed worklists: create, list, rotate, test."""
