-- Stop starting new trainings (a running one finishes; serving and rollbacks go on).
-- This writes spec: under GitOps with self-heal, change it in Git instead.
obj.spec.suspend = true
return obj
