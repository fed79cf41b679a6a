"""Engines drive one chat account each; the manager only knows `base.Engine`."""
