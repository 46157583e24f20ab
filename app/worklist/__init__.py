"""The advisors' worklist: their services' open cases with waiting times, next appointments and
flags, filtered, sorted and paged."""
