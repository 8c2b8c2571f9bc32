"""Planning stage: splits the ad into timed scenes and provider-sized clips."""
