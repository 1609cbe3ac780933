DROP TABLE verification_secrets;
DROP TABLE users;
