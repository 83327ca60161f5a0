-- One database and one user for the brokers; run as the MariaDB root user.
CREATE DATABASE IF NOT EXISTS gpuproxy CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'gpuproxy'@'%' IDENTIFIED BY 'CHANGE-ME';
GRANT ALL PRIVILEGES ON gpuproxy.* TO 'gpuproxy'@'%';
FLUSH PRIVILEGES;
