"""`edgesched demo`: a whole edge cluster of real nodes on one machine, with one command."""
