"""bloomctl: parsing and printing over the control client; everything else is the agent's."""
