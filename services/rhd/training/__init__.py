"""Model building: the same stage functions as the services, run in-process, seeded."""
