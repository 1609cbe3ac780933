DROP TABLE challenge_solutions;
