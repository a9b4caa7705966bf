"""Runtime harnesses (installed as gzsq.runtimes), one per runtime behind one interface.
Registered with core through the `gzsq.runtimes` entry-point group."""
