"""What a node author imports: the `Node` base class, its context and the registry."""
